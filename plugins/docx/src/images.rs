//! Pictures from data: `{"_type": "image", "data": "<base64 PNG or JPEG>",
//! "width_mm": 40, "height_mm": 30}` printed with `{{ logo }}` becomes an
//! inline picture (like docxtpl's `InlineImage`).

use base64::Engine as _;
use minijinja::Value;
use std::collections::HashMap;

pub const EMU_PER_MM: f64 = 36_000.0;
pub const EMU_PER_PX: f64 = 9_525.0; // at 96 dpi
/// Largest picture side accepted: one metre.
const MAX_EMU: f64 = 1000.0 * EMU_PER_MM;
/// Largest decoded picture.
pub const MAX_IMAGE_BYTES: usize = 16 << 20;

pub struct Media {
    pub bytes: Vec<u8>,
    pub ext: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Placement {
    pub media: u32,
    pub cx: u64,
    pub cy: u64,
}

#[derive(Default)]
pub struct Images {
    pub media: Vec<Media>,
    by_source: HashMap<(usize, usize), u32>,
    by_content: HashMap<(u32, usize), u32>,
    pub placements: Vec<Placement>,
    by_placement: HashMap<Placement, u32>,
}

/// Whether a value is an image object.
pub fn is_image(v: &Value) -> bool {
    v.kind() == minijinja::value::ValueKind::Map
        && v.get_attr("_type")
            .ok()
            .is_some_and(|t| t.as_str() == Some("image"))
}

fn number(v: &Value, key: &str) -> Result<Option<f64>, String> {
    match v.get_attr(key) {
        Ok(x) if x.is_undefined() || x.is_none() => Ok(None),
        Ok(x) => match f64::try_from(x.clone()) {
            Ok(n) if n.is_finite() && n > 0.0 => Ok(Some(n)),
            _ => Err(format!("image {key} must be a positive number, got {x}")),
        },
        Err(_) => Ok(None),
    }
}

/// A length like "40mm", "4cm", "1.5in", "72pt", "200px" in EMU.
fn length(v: &Value, key: &str) -> Result<Option<f64>, String> {
    let x = match v.get_attr(key) {
        Ok(x) if !(x.is_undefined() || x.is_none()) => x,
        _ => return Ok(None),
    };
    if let Ok(n) = f64::try_from(x.clone())
        && x.as_str().is_none()
    {
        // A bare number is millimetres.
        return if n.is_finite() && n > 0.0 {
            Ok(Some(n * EMU_PER_MM))
        } else {
            Err(format!("image {key} must be positive"))
        };
    }
    let s = x.as_str().unwrap_or_default().trim().to_ascii_lowercase();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("image {key} {s:?} is not a length like \"40mm\""))?;
    let per = match unit.trim() {
        "mm" => EMU_PER_MM,
        "cm" => EMU_PER_MM * 10.0,
        "in" => 914_400.0,
        "pt" => 12_700.0,
        "px" | "" => EMU_PER_PX,
        "emu" => 1.0,
        u => {
            return Err(format!(
                "image {key}: unknown unit {u:?} (use mm, cm, in, pt or px)"
            ));
        }
    };
    if n <= 0.0 {
        return Err(format!("image {key} must be positive"));
    }
    Ok(Some(n * per))
}

fn pixel_size(b: &[u8]) -> Option<(u32, u32, &'static str)> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") && b.len() >= 24 && &b[12..16] == b"IHDR" {
        let w = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
        let h = u32::from_be_bytes([b[20], b[21], b[22], b[23]]);
        return Some((w, h, "png"));
    }
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let mut i = 2;
        while i + 9 < b.len() {
            if b[i] != 0xFF {
                i += 1;
                continue;
            }
            let m = b[i + 1];
            if m == 0xFF {
                i += 1;
                continue;
            }
            if matches!(m, 0xD8 | 0x01 | 0xD0..=0xD7) {
                i += 2;
                continue;
            }
            let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
            if matches!(m, 0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF) {
                let h = u16::from_be_bytes([b[i + 5], b[i + 6]]) as u32;
                let w = u16::from_be_bytes([b[i + 7], b[i + 8]]) as u32;
                return Some((w, h, "jpeg"));
            }
            i += 2 + len;
        }
        return None;
    }
    None
}

impl Images {
    /// Register an image value; returns the placement index.
    pub fn add(&mut self, v: &Value) -> Result<u32, String> {
        let data = v
            .get_attr("data")
            .ok()
            .filter(|d| d.as_str().is_some())
            .ok_or("an image needs \"data\": a base64 string of PNG or JPEG bytes")?;
        let s = data.as_str().unwrap_or_default();
        let key = (s.as_ptr() as usize, s.len());
        let media = match self.by_source.get(&key) {
            Some(&m) => m,
            None => {
                let b64 = match s.find(";base64,") {
                    Some(i) if s.starts_with("data:") => &s[i + 8..],
                    _ => s,
                };
                let cleaned: String;
                let b64 = if b64.bytes().any(|c| c.is_ascii_whitespace()) {
                    cleaned = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                    cleaned.as_str()
                } else {
                    b64
                };
                if b64.len() / 4 * 3 > MAX_IMAGE_BYTES {
                    return Err(format!(
                        "image data is larger than {} MiB",
                        MAX_IMAGE_BYTES >> 20
                    ));
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
                    .map_err(|e| format!("image data is not valid base64: {e}"))?;
                let (_, _, ext) = pixel_size(&bytes)
                    .ok_or("image data is not a PNG or JPEG picture (or its header is damaged)")?;
                let ckey = (crc32fast::hash(&bytes), bytes.len());
                let m = match self.by_content.get(&ckey) {
                    Some(&m) if self.media[m as usize].bytes == bytes => m,
                    _ => {
                        self.media.push(Media { bytes, ext });
                        let m = (self.media.len() - 1) as u32;
                        self.by_content.insert(ckey, m);
                        m
                    }
                };
                self.by_source.insert(key, m);
                m
            }
        };
        let (pw, ph, _) = pixel_size(&self.media[media as usize].bytes).unwrap_or((1, 1, "png"));
        let (pw, ph) = (pw.max(1) as f64, ph.max(1) as f64);
        let w = match number(v, "width_mm")? {
            Some(n) => Some(n * EMU_PER_MM),
            None => length(v, "width")?,
        };
        let h = match number(v, "height_mm")? {
            Some(n) => Some(n * EMU_PER_MM),
            None => length(v, "height")?,
        };
        let (cx, cy) = match (w, h) {
            (Some(w), Some(h)) => (w, h),
            (Some(w), None) => (w, w * ph / pw),
            (None, Some(h)) => (h * pw / ph, h),
            (None, None) => (pw * EMU_PER_PX, ph * EMU_PER_PX),
        };
        if cx > MAX_EMU || cy > MAX_EMU || cx < 1.0 || cy < 1.0 {
            return Err("image size must be between 1 EMU and 1 m per side".into());
        }
        let p = Placement {
            media,
            cx: cx.round() as u64,
            cy: cy.round() as u64,
        };
        if let Some(&i) = self.by_placement.get(&p) {
            return Ok(i);
        }
        self.placements.push(p);
        let i = (self.placements.len() - 1) as u32;
        self.by_placement.insert(p, i);
        Ok(i)
    }
}

/// The run(s) replacing an image placeholder inside `<w:t>`.
pub fn drawing_xml(out: &mut String, p: &Placement, rid: &str, doc_pr_id: u32, ext: &str) {
    use std::fmt::Write;
    let _ = write!(
        out,
        "</w:t></w:r><w:r><w:drawing><wp:inline distT=\"0\" distB=\"0\" distL=\"0\" distR=\"0\" \
xmlns:wp=\"http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing\">\
<wp:extent cx=\"{cx}\" cy=\"{cy}\"/><wp:effectExtent l=\"0\" t=\"0\" r=\"0\" b=\"0\"/>\
<wp:docPr id=\"{id}\" name=\"Picture {id}\"/><wp:cNvGraphicFramePr>\
<a:graphicFrameLocks xmlns:a=\"http://schemas.openxmlformats.org/drawingml/2006/main\" noChangeAspect=\"1\"/>\
</wp:cNvGraphicFramePr><a:graphic xmlns:a=\"http://schemas.openxmlformats.org/drawingml/2006/main\">\
<a:graphicData uri=\"http://schemas.openxmlformats.org/drawingml/2006/picture\">\
<pic:pic xmlns:pic=\"http://schemas.openxmlformats.org/drawingml/2006/picture\">\
<pic:nvPicPr><pic:cNvPr id=\"0\" name=\"image{m}.{ext}\"/><pic:cNvPicPr/></pic:nvPicPr>\
<pic:blipFill><a:blip xmlns:r=\"http://schemas.openxmlformats.org/officeDocument/2006/relationships\" r:embed=\"{rid}\"/>\
<a:stretch><a:fillRect/></a:stretch></pic:blipFill><pic:spPr><a:xfrm><a:off x=\"0\" y=\"0\"/>\
<a:ext cx=\"{cx}\" cy=\"{cy}\"/></a:xfrm><a:prstGeom prst=\"rect\"><a:avLst/></a:prstGeom></pic:spPr>\
</pic:pic></a:graphicData></a:graphic></wp:inline></w:drawing></w:r><w:r><w:t xml:space=\"preserve\">",
        cx = p.cx,
        cy = p.cy,
        id = doc_pr_id,
        m = p.media,
    );
}
