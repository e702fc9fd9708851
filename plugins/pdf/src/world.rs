//! The Typst `World` of one render: the template, the data (as `sys.inputs`,
//! `data.json` and decoded images), and fonts loaded lazily from a
//! [`FontSource`] (the host's `fonts` interface in the component).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde::de::value::{Error as DeError, SeqDeserializer};
use typst::diag::{FileError, FileResult};
use typst::foundations::{Bytes, Datetime, Dict, Duration};
use typst::layout::Ratio;
use typst::syntax::{FileId, RootedPath, Source, VirtualPath, VirtualRoot};
use typst::text::{
    Coverage, Font, FontBook, FontFamily, FontFlags, FontInfo, FontList, FontStretch, FontStyle,
    FontVariant, FontWeight, TextElem,
};
use typst::utils::LazyHash;
use typst::{Library, LibraryExt, World};

/// One face on offer, described without its bytes.
pub struct Face {
    /// Handle for [`FontSource::data`].
    pub id: u32,
    /// Index of the face inside its file.
    pub index: u32,
    pub info: FontInfo,
}

/// Where font bytes (and the template bundle's other files) come from.
pub trait FontSource: Send + Sync {
    /// The bytes of the file holding face `id`.
    fn data(&self, id: u32) -> Option<Vec<u8>>;

    /// The bytes of the template bundle's file `name` (e.g. "logo.png").
    fn bundle_file(&self, name: &str) -> Option<Vec<u8>> {
        let _ = name;
        None
    }
}

/// Describe a face for the font book. `coverage` holds half-open ranges of
/// code points; they need not be sorted.
#[allow(clippy::too_many_arguments)]
pub fn face(
    id: u32,
    index: u32,
    family: String,
    style: FontStyle,
    weight: u16,
    stretch_per_mille: u16,
    monospace: bool,
    serif: bool,
    mut coverage: Vec<(u32, u32)>,
) -> Face {
    let mut flags = FontFlags::empty();
    flags.set(FontFlags::MONOSPACE, monospace);
    flags.set(FontFlags::SERIF, serif);
    Face {
        id,
        index,
        info: FontInfo {
            family,
            variant: FontVariant {
                style,
                weight: FontWeight::from_number(weight),
                stretch: FontStretch::from_ratio(Ratio::new(f64::from(stretch_per_mille) / 1000.0)),
            },
            flags,
            axes: Vec::new(),
            coverage: coverage_from_ranges(&mut coverage),
        },
    }
}

/// Typst's run-length coverage (alternating counts of code points outside
/// and inside the set) from half-open ranges.
fn coverage_from_ranges(ranges: &mut [(u32, u32)]) -> Coverage {
    ranges.sort_unstable();
    let mut runs: Vec<u32> = Vec::with_capacity(ranges.len() * 2);
    let mut cursor = 0u32;
    for &(start, end) in ranges.iter() {
        let start = start.max(cursor);
        if end <= start {
            continue;
        }
        if start == cursor && !runs.is_empty() {
            // Adjacent to the previous range: extend it.
            *runs.last_mut().expect("non-empty") += end - start;
        } else {
            runs.push(start - cursor);
            runs.push(end - start);
        }
        cursor = end;
    }
    // `Coverage` keeps its runs private but deserializes from them.
    Coverage::deserialize(SeqDeserializer::<_, DeError>::new(runs.into_iter()))
        .expect("a list of u32 is a coverage")
}

/// Families tried in order when a template sets no font (Typst's own default,
/// Libertinus Serif, is used when installed; otherwise common system fonts),
/// then CJK families so Chinese/Japanese/Korean text renders by default.
const DEFAULT_FAMILIES: &[&str] = &[
    "libertinus serif",
    "new computer modern",
    "noto serif",
    "dejavu serif",
    "liberation serif",
    "noto sans",
    "dejavu sans",
    "liberation sans",
];
const DEFAULT_CJK_FAMILIES: &[&str] = &[
    "noto serif cjk sc",
    "noto sans cjk sc",
    "source han serif sc",
    "source han sans sc",
];

/// The font Typst's equations ask for, and installed math fonts (with an
/// OpenType MATH table) that stand in for it when it is missing.
const MATH_DEFAULT: &str = "New Computer Modern Math";
const MATH_FAMILIES: &[&str] = &[
    "libertinus math",
    "stix two math",
    "latin modern math",
    "tex gyre termes math",
    "tex gyre pagella math",
    "dejavu math tex gyre",
    "noto sans math",
    "fira math",
];

/// The fonts on offer, described for Typst: the font book (hashed once, for
/// Typst's memoization) and where each face's bytes come from. Built once
/// per plugin instance; in the sandbox once per plugin load (the host's
/// `prepare` snapshot), natively once per process.
pub struct FontSet {
    book: LazyHash<FontBook>,
    /// (face id for [`FontSource::data`], index in the file), by book index.
    slots: Vec<(u32, u32)>,
    /// The default font list (see [`DEFAULT_FAMILIES`]), if any is installed.
    families: Option<FontList>,
}

impl FontSet {
    pub fn new(faces: Vec<Face>) -> FontSet {
        let mut slots = Vec::with_capacity(faces.len());
        let mut book = FontBook::new();
        let has_math_default = faces
            .iter()
            .any(|f| f.info.family.eq_ignore_ascii_case(MATH_DEFAULT));
        let math = MATH_FAMILIES.iter().find_map(|family| {
            let members: Vec<usize> = (0..faces.len())
                .filter(|&i| faces[i].info.family.eq_ignore_ascii_case(family))
                .collect();
            (!members.is_empty()).then_some(members)
        });
        let mut aliases = Vec::new();
        if let (false, Some(members)) = (has_math_default, math) {
            // Equations ask for Typst's math font; serve an installed one
            // under its name (the faces are loaded from their own files).
            for i in members {
                let mut info = faces[i].info.clone();
                info.family = MATH_DEFAULT.into();
                aliases.push((faces[i].id, faces[i].index, info));
            }
        }
        let all = faces
            .into_iter()
            .map(|f| (f.id, f.index, f.info))
            .chain(aliases);
        for (id, index, info) in all {
            slots.push((id, index));
            book.push(info);
        }
        let families: Vec<FontFamily> = DEFAULT_FAMILIES
            .iter()
            .filter(|f| book.contains_family(f))
            .take(1)
            .chain(
                DEFAULT_CJK_FAMILIES
                    .iter()
                    .filter(|f| book.contains_family(f))
                    .take(1),
            )
            .map(|f| FontFamily::new(f))
            .collect();
        let set = FontSet {
            book: LazyHash::new(book),
            slots,
            families: (!families.is_empty()).then_some(FontList(families)),
        };
        // Hash the book now (SipHash over every face's coverage): once here,
        // not in every compile.
        let _ = typst::utils::hash128(&set.book);
        set
    }
}

pub struct SandboxWorld {
    library: LazyHash<Library>,
    set: &'static FontSet,
    /// Faces loaded so far in this render, by book index.
    loaded: Vec<OnceLock<Option<Font>>>,
    fonts: Box<dyn FontSource>,
    main: Source,
    files: HashMap<FileId, Bytes>,
    /// Bundle files read so far (or found missing).
    bundle: std::sync::Mutex<HashMap<FileId, Option<Bytes>>>,
    today: Option<Datetime>,
}

impl SandboxWorld {
    /// `name` is the template's file name, `files` maps absolute virtual
    /// paths (`/data.json`) to contents.
    pub fn new(
        name: &str,
        template: String,
        inputs: Dict,
        files: impl IntoIterator<Item = (String, Bytes)>,
        set: &'static FontSet,
        fonts: Box<dyn FontSource>,
        today: Option<Datetime>,
    ) -> SandboxWorld {
        let main = file_id(name).unwrap_or_else(|| file_id("main.typ").expect("valid path"));
        let files = files
            .into_iter()
            .filter_map(|(path, bytes)| Some((file_id(&path)?, bytes)))
            .collect();

        let mut library = Library::builder().with_inputs(inputs).build();
        if let Some(families) = &set.families {
            library.styles.set(TextElem::font, families.clone());
        }

        SandboxWorld {
            library: LazyHash::new(library),
            set,
            loaded: (0..set.slots.len()).map(|_| OnceLock::new()).collect(),
            fonts,
            main: Source::new(main, template),
            files,
            bundle: Default::default(),
            today,
        }
    }

    pub fn main_source(&self) -> &Source {
        &self.main
    }
}

fn file_id(path: &str) -> Option<FileId> {
    let vpath = VirtualPath::new(path).ok()?;
    Some(RootedPath::new(VirtualRoot::Project, vpath).intern())
}

impl World for SandboxWorld {
    fn library(&self) -> &LazyHash<Library> {
        &self.library
    }

    fn book(&self) -> &LazyHash<FontBook> {
        &self.set.book
    }

    fn main(&self) -> FileId {
        self.main.id()
    }

    fn source(&self, id: FileId) -> FileResult<Source> {
        if id == self.main.id() {
            return Ok(self.main.clone());
        }
        let bytes = self.file(id)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| FileError::InvalidUtf8)?;
        Ok(Source::new(id, text.into()))
    }

    fn file(&self, id: FileId) -> FileResult<Bytes> {
        if id == self.main.id() {
            return Ok(Bytes::new(self.main.text().as_bytes().to_vec()));
        }
        if let VirtualRoot::Package(spec) = id.root() {
            return Err(FileError::Other(Some(
                format!("packages are not available in the sandbox ({spec})").into(),
            )));
        }
        if let Some(bytes) = self.files.get(&id) {
            return Ok(bytes.clone());
        }
        // A file of the template bundle: a plain name at the project root
        // (`image("logo.png")`), read once from the host.
        let path = id.vpath().get_without_slash();
        let found = if path.contains('/') {
            None
        } else {
            let mut cache = self.bundle.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .entry(id)
                .or_insert_with(|| self.fonts.bundle_file(path).map(Bytes::new))
                .clone()
        };
        found.ok_or_else(|| FileError::NotFound(id.vpath().get_with_slash().into()))
    }

    fn font(&self, index: usize) -> Option<Font> {
        let &(id, face_index) = self.set.slots.get(index)?;
        self.loaded
            .get(index)?
            .get_or_init(|| {
                let data = self.fonts.data(id)?;
                Font::new(Bytes::new(data), face_index)
            })
            .clone()
    }

    fn today(&self, offset: Option<Duration>) -> Option<Datetime> {
        let _ = offset;
        self.today
    }
}

/// Today's date (UTC) from the wall clock.
pub fn today_utc() -> Option<Datetime> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    Datetime::from_ymd(y as i32, m as u8, d as u8)
}

/// Parse `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<Datetime> {
    let mut parts = s.trim().splitn(3, '-');
    let y = parts.next()?.parse().ok()?;
    let m = parts.next()?.parse().ok()?;
    let d = parts.next()?.parse().ok()?;
    Datetime::from_ymd(y, m, d)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_matches_typst_encoding() {
        let c = coverage_from_ranges(&mut [(9, 12), (2, 5), (15, 16), (18, 20), (5, 5)]);
        let points: Vec<u32> = c.iter().collect();
        assert_eq!(points, [2, 3, 4, 9, 10, 11, 15, 18, 19]);
        assert_eq!(c, Coverage::from_vec(points));
        let merged = coverage_from_ranges(&mut [(0, 3), (3, 5), (4, 8)]);
        assert_eq!(
            merged.iter().collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert!(parse_date("2024-02-30").is_none());
        assert_eq!(parse_date("2024-02-29"), Datetime::from_ymd(2024, 2, 29));
    }
}
