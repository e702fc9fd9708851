//! A small, strict ZIP reader and writer for .docx packages.
//!
//! The reader trusts nothing in the archive: it checks the entry count, the
//! entry names (no path traversal), the declared sizes and compression ratios
//! (zip bombs) and that entries do not overlap *before* anything is
//! decompressed, and it never inflates more than an entry declares.
//! Entries the render does not change are copied to the output still
//! compressed (no inflate, no deflate).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Most entries a package may have.
pub const MAX_ENTRIES: usize = 4096;
/// Most bytes all entries together may expand to.
pub const MAX_TOTAL_UNCOMPRESSED: u64 = 256 << 20;
/// An entry larger than this (uncompressed) must not compress better than `MAX_RATIO`.
pub const RATIO_CHECK_ABOVE: u64 = 1 << 20;
/// Highest accepted compression ratio for entries above `RATIO_CHECK_ABOVE`.
pub const MAX_RATIO: u64 = 100;

#[derive(Debug)]
pub struct ZipError(pub String);

impl std::fmt::Display for ZipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ZipError> {
    Err(ZipError(msg.into()))
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub method: u16,
    pub crc: u32,
    pub csize: u32,
    pub usize: u32,
    pub time: u16,
    pub date: u16,
    local_offset: usize,
    data_start: usize,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.name.ends_with('/')
    }
}

pub struct Archive<'a> {
    bytes: &'a [u8],
    pub entries: Vec<Entry>,
    /// One inflater for every entry (its state is large: reset, not rebuilt).
    inflater: std::cell::RefCell<Option<Decompress>>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

const EOCD_SIG: u32 = 0x0605_4b50;
const CDH_SIG: u32 = 0x0201_4b50;
const LFH_SIG: u32 = 0x0403_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;

/// Why a name is refused as a package entry, if it is.
fn bad_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("is empty");
    }
    if name.starts_with('/') {
        return Some("is an absolute path");
    }
    if name.contains('\\') {
        return Some("contains a backslash");
    }
    if name.contains('\0') {
        return Some("contains a NUL byte");
    }
    if name.contains(':') {
        return Some("contains a drive or scheme separator ':'");
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    if trimmed
        .split('/')
        .any(|seg| seg == ".." || seg == "." || seg.is_empty())
    {
        return Some("has a '..', '.' or empty path segment (path traversal)");
    }
    None
}

impl<'a> Archive<'a> {
    /// Read the central directory and check every limit. Nothing is inflated.
    pub fn open(bytes: &'a [u8]) -> Result<Archive<'a>, ZipError> {
        if bytes.len() < 22 || u32_at(bytes, 0) != LFH_SIG {
            let what = sniff(bytes);
            return err(format!(
                "the template is not a .docx file: a .docx is a ZIP archive, this is {what}"
            ));
        }
        // End of central directory: 22 bytes + a comment of up to 65535 bytes.
        let lowest = bytes.len().saturating_sub(22 + 0xFFFF);
        let mut eocd = None;
        let mut at = bytes.len() - 22;
        loop {
            if u32_at(bytes, at) == EOCD_SIG
                && at + 22 + u16_at(bytes, at + 20) as usize == bytes.len()
            {
                eocd = Some(at);
                break;
            }
            if at == lowest {
                break;
            }
            at -= 1;
        }
        let Some(eocd) = eocd else {
            return err(
                "the template is not a valid .docx file: ZIP end-of-central-directory record not found (truncated or not a ZIP archive)",
            );
        };
        if eocd >= 20 && u32_at(bytes, eocd - 20) == ZIP64_LOCATOR_SIG {
            return err("ZIP64 archives are not supported for .docx templates");
        }
        let disk = u16_at(bytes, eocd + 4);
        let cd_disk = u16_at(bytes, eocd + 6);
        let n_disk = u16_at(bytes, eocd + 8) as usize;
        let n_total = u16_at(bytes, eocd + 10) as usize;
        let cd_size = u32_at(bytes, eocd + 12) as usize;
        let cd_offset = u32_at(bytes, eocd + 16) as usize;
        if disk != 0 || cd_disk != 0 || n_disk != n_total {
            return err("multi-volume ZIP archives are not supported");
        }
        if n_total == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
            return err("ZIP64 archives are not supported for .docx templates");
        }
        if n_total > MAX_ENTRIES {
            return err(format!(
                "the template has {n_total} ZIP entries, more than the limit of {MAX_ENTRIES}"
            ));
        }
        if cd_offset.checked_add(cd_size).is_none_or(|end| end > eocd) {
            return err("corrupt ZIP archive: central directory out of bounds");
        }
        let mut entries = Vec::with_capacity(n_total);
        let mut pos = cd_offset;
        let cd_end = cd_offset + cd_size;
        let mut total: u64 = 0;
        for _ in 0..n_total {
            if pos + 46 > cd_end || u32_at(bytes, pos) != CDH_SIG {
                return err("corrupt ZIP archive: bad central directory entry");
            }
            let flags = u16_at(bytes, pos + 8);
            let method = u16_at(bytes, pos + 10);
            let time = u16_at(bytes, pos + 12);
            let date = u16_at(bytes, pos + 14);
            let crc = u32_at(bytes, pos + 16);
            let csize = u32_at(bytes, pos + 20);
            let usize_ = u32_at(bytes, pos + 24);
            let name_len = u16_at(bytes, pos + 28) as usize;
            let extra_len = u16_at(bytes, pos + 30) as usize;
            let comment_len = u16_at(bytes, pos + 32) as usize;
            let local_offset = u32_at(bytes, pos + 42) as usize;
            let next = pos + 46 + name_len + extra_len + comment_len;
            if next > cd_end {
                return err("corrupt ZIP archive: central directory entry out of bounds");
            }
            let raw_name = &bytes[pos + 46..pos + 46 + name_len];
            let Ok(name) = std::str::from_utf8(raw_name) else {
                return err("a ZIP entry name is not valid UTF-8");
            };
            if let Some(why) = bad_name(name) {
                return err(format!("refused ZIP entry name {name:?}: it {why}"));
            }
            if flags & 1 != 0 {
                return err(format!(
                    "ZIP entry {name:?} is encrypted; encrypted templates are not supported"
                ));
            }
            if method != 0 && method != 8 {
                return err(format!(
                    "ZIP entry {name:?} uses compression method {method}; only stored (0) and deflate (8) are supported"
                ));
            }
            if csize == 0xFFFF_FFFF || usize_ == 0xFFFF_FFFF || local_offset == 0xFFFF_FFFF {
                return err("ZIP64 archives are not supported for .docx templates");
            }
            if method == 0 && csize != usize_ {
                return err(format!(
                    "corrupt ZIP archive: stored entry {name:?} has different sizes"
                ));
            }
            let (cs, us) = (csize as u64, usize_ as u64);
            if us > RATIO_CHECK_ABOVE && us > MAX_RATIO * cs.max(1) {
                return err(format!(
                    "refused zip bomb: entry {name:?} expands {cs} bytes to {us} bytes (ratio {}:1, limit {MAX_RATIO}:1)",
                    us / cs.max(1)
                ));
            }
            total += us;
            if total > MAX_TOTAL_UNCOMPRESSED {
                return err(format!(
                    "refused zip bomb: the entries expand to more than {} MiB in total",
                    MAX_TOTAL_UNCOMPRESSED >> 20
                ));
            }
            // Local header: must be inside the archive and name the same file.
            if local_offset.checked_add(30).is_none_or(|e| e > cd_offset)
                || u32_at(bytes, local_offset) != LFH_SIG
            {
                return err(format!(
                    "corrupt ZIP archive: local header of {name:?} not found"
                ));
            }
            let l_name_len = u16_at(bytes, local_offset + 26) as usize;
            let l_extra_len = u16_at(bytes, local_offset + 28) as usize;
            let data_start = local_offset + 30 + l_name_len + l_extra_len;
            if data_start
                .checked_add(csize as usize)
                .is_none_or(|e| e > cd_offset)
                || &bytes[local_offset + 30..local_offset + 30 + l_name_len] != raw_name
            {
                return err(format!(
                    "corrupt ZIP archive: local header of {name:?} does not match the central directory"
                ));
            }
            entries.push(Entry {
                name: name.to_string(),
                method,
                crc,
                csize,
                usize: usize_,
                time,
                date,
                local_offset,
                data_start,
            });
            pos = next;
        }
        // No two entries may share bytes (the "overlapping files" zip bomb),
        // and no two may have the same (case-insensitive, as in OPC) name.
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_unstable_by_key(|&i| entries[i].local_offset);
        for w in order.windows(2) {
            let (a, b) = (&entries[w[0]], &entries[w[1]]);
            if a.data_start + a.csize as usize > b.local_offset {
                return err(format!(
                    "refused zip bomb: entries {:?} and {:?} overlap",
                    a.name, b.name
                ));
            }
        }
        let mut names: Vec<String> = entries
            .iter()
            .map(|e| e.name.to_ascii_lowercase())
            .collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return err(format!("the ZIP archive has two entries named {:?}", w[0]));
        }
        Ok(Archive {
            bytes,
            entries,
            inflater: std::cell::RefCell::new(None),
        })
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.name.eq_ignore_ascii_case(name))
    }

    /// The raw (still compressed) bytes of entry `i`.
    pub fn raw(&self, i: usize) -> &'a [u8] {
        let e = &self.entries[i];
        &self.bytes[e.data_start..e.data_start + e.csize as usize]
    }

    /// Inflate entry `i` entirely (at most its declared size) and check its CRC.
    pub fn read(&self, i: usize, limit: usize) -> Result<Vec<u8>, ZipError> {
        let e = &self.entries[i];
        if e.usize as usize > limit {
            return err(format!(
                "ZIP entry {:?} is {} bytes, more than the limit of {limit} bytes for a part the plugin reads",
                e.name, e.usize
            ));
        }
        let out = self.inflate(i, e.usize as usize, true)?;
        if crc32fast::hash(&out) != e.crc {
            return err(format!("corrupt ZIP archive: CRC mismatch in {:?}", e.name));
        }
        Ok(out)
    }

    /// Inflate at most `max` bytes from the start of entry `i` (decoding
    /// only that much, not a whole block or window).
    pub fn read_prefix(&self, i: usize, max: usize) -> Result<Vec<u8>, ZipError> {
        use miniz_oxide::inflate::TINFLStatus;
        use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};
        let e = &self.entries[i];
        let want = max.min(e.usize as usize);
        let raw = self.raw(i);
        if e.method == 0 {
            return Ok(raw[..want.min(raw.len())].to_vec());
        }
        let mut out = vec![0u8; want];
        let mut d = Box::<DecompressorOxide>::default();
        let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF
            | inflate_flags::TINFL_FLAG_HAS_MORE_INPUT;
        let (status, _, written) = decompress(&mut d, raw, &mut out, 0, flags);
        match status {
            TINFLStatus::Done | TINFLStatus::HasMoreOutput | TINFLStatus::NeedsMoreInput => {
                out.truncate(written);
                Ok(out)
            }
            _ => err(format!("corrupt ZIP entry {:?}: bad deflate data", e.name)),
        }
    }

    fn inflate(&self, i: usize, want: usize, whole: bool) -> Result<Vec<u8>, ZipError> {
        let e = &self.entries[i];
        let raw = self.raw(i);
        if e.method == 0 {
            return Ok(raw[..want.min(raw.len())].to_vec());
        }
        // One spare byte tells "more than declared" apart from "exactly".
        let mut out = Vec::with_capacity(want + 1);
        let mut slot = self.inflater.borrow_mut();
        let d = match slot.as_mut() {
            Some(d) => {
                d.reset(false);
                d
            }
            None => slot.insert(Decompress::new(false)),
        };
        loop {
            let (in_before, out_before) = (d.total_in(), d.total_out());
            let status = d
                .decompress_vec(&raw[in_before as usize..], &mut out, FlushDecompress::None)
                .map_err(|x| ZipError(format!("corrupt ZIP entry {:?}: {x}", e.name)))?;
            if out.len() > want {
                if whole {
                    return err(format!(
                        "refused zip bomb: entry {:?} inflates beyond its declared size of {} bytes",
                        e.name, e.usize
                    ));
                }
                out.truncate(want);
                return Ok(out);
            }
            if !whole && out.len() == want {
                return Ok(out);
            }
            if status == Status::StreamEnd {
                break;
            }
            if out.len() == out.capacity() {
                out.reserve_exact(1);
            }
            if d.total_in() == in_before && d.total_out() == out_before {
                return err(format!("corrupt ZIP entry {:?}: truncated data", e.name));
            }
        }
        if whole && out.len() != want {
            return err(format!(
                "corrupt ZIP entry {:?}: inflates to {} bytes, declared {}",
                e.name,
                out.len(),
                e.usize
            ));
        }
        Ok(out)
    }
}

/// A short description of what non-ZIP bytes look like, for the error.
fn sniff(bytes: &[u8]) -> &'static str {
    if bytes.is_empty() {
        "an empty file"
    } else if bytes.starts_with(b"%PDF") {
        "a PDF file"
    } else if bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
        "an OLE2 file (legacy .doc? save it as .docx)"
    } else if bytes.starts_with(b"{\\rtf") {
        "an RTF file"
    } else if bytes.starts_with(b"PK") {
        "a ZIP fragment without a local file header at the start"
    } else if std::str::from_utf8(&bytes[..bytes.len().min(512)]).is_ok() {
        "text"
    } else {
        "binary data without a ZIP signature"
    }
}

/// Content deflated by a [`DeflateSink`], ready to be added as an entry.
pub struct Prepared {
    method: u16,
    crc: u32,
    usize: u32,
    data: Vec<u8>,
}

/// Input collected before each deflate call.
const SINK_CHUNK: usize = 32 << 10;

/// An [`std::io::Write`] that deflates (and checksums) what it is given in
/// chunks, so a rendered part never exists as one whole string: a large
/// document touches far less memory (every page of a fresh sandbox's memory
/// costs a page fault). Fails once more than `limit` bytes were written.
pub struct DeflateSink<'w> {
    deflater: Option<&'w mut Compress>,
    crc: crc32fast::Hasher,
    pending: Vec<u8>,
    out: Vec<u8>,
    total: usize,
    limit: usize,
    pub exceeded: bool,
}

impl DeflateSink<'_> {
    fn deflate_pending(&mut self, finish: bool) -> std::io::Result<()> {
        self.crc.update(&self.pending);
        let Some(c) = self.deflater.as_deref_mut() else {
            self.out.extend_from_slice(&self.pending);
            self.pending.clear();
            return Ok(());
        };
        let flush = if finish {
            FlushCompress::Finish
        } else {
            FlushCompress::None
        };
        let start = c.total_in();
        loop {
            if self.out.capacity() - self.out.len() < 4096 {
                self.out.reserve(self.out.capacity().max(16 << 10));
            }
            let done = (c.total_in() - start) as usize;
            let status = c
                .compress_vec(&self.pending[done..], &mut self.out, flush)
                .map_err(std::io::Error::other)?;
            let done = (c.total_in() - start) as usize;
            if (finish && status == Status::StreamEnd) || (!finish && done == self.pending.len()) {
                break;
            }
        }
        self.pending.clear();
        Ok(())
    }

    /// Deflate what is left and hand the entry's content over.
    pub fn finish(mut self) -> Result<Prepared, ZipError> {
        self.deflate_pending(true)
            .map_err(|x| ZipError(format!("deflate failed: {x}")))?;
        if self.total > u32::MAX as usize / 2 {
            return err("a part is too large for a ZIP entry");
        }
        Ok(Prepared {
            method: if self.deflater.is_some() { 8 } else { 0 },
            crc: self.crc.finalize(),
            usize: self.total as u32,
            data: self.out,
        })
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl std::io::Write for DeflateSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.total += buf.len();
        if self.total > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("output limit exceeded"));
        }
        if self.pending.len() + buf.len() > SINK_CHUNK && !self.pending.is_empty() {
            self.deflate_pending(false)?;
        }
        if buf.len() >= SINK_CHUNK {
            self.pending.extend_from_slice(buf);
            self.deflate_pending(false)?;
        } else {
            self.pending.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes a ZIP archive: deflated new content or raw copies of input entries.
pub struct Writer {
    out: Vec<u8>,
    central: Vec<u8>,
    count: usize,
    level: u32,
    deflater: Option<Compress>,
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(capacity: usize, level: u32) -> Writer {
        Writer {
            out: Vec::with_capacity(capacity),
            central: Vec::with_capacity(4096),
            count: 0,
            level,
            deflater: None,
            buf: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        name: &str,
        method: u16,
        crc: u32,
        csize: u32,
        usize_: u32,
        time: u16,
        date: u16,
        data: &[u8],
    ) {
        let offset = self.out.len() as u32;
        let flags: u16 = if name.is_ascii() { 0 } else { 0x0800 };
        let o = &mut self.out;
        o.extend_from_slice(&LFH_SIG.to_le_bytes());
        o.extend_from_slice(&20u16.to_le_bytes());
        o.extend_from_slice(&flags.to_le_bytes());
        o.extend_from_slice(&method.to_le_bytes());
        o.extend_from_slice(&time.to_le_bytes());
        o.extend_from_slice(&date.to_le_bytes());
        o.extend_from_slice(&crc.to_le_bytes());
        o.extend_from_slice(&csize.to_le_bytes());
        o.extend_from_slice(&usize_.to_le_bytes());
        o.extend_from_slice(&(name.len() as u16).to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        o.extend_from_slice(name.as_bytes());
        o.extend_from_slice(data);
        let c = &mut self.central;
        c.extend_from_slice(&CDH_SIG.to_le_bytes());
        c.extend_from_slice(&20u16.to_le_bytes());
        c.extend_from_slice(&20u16.to_le_bytes());
        c.extend_from_slice(&flags.to_le_bytes());
        c.extend_from_slice(&method.to_le_bytes());
        c.extend_from_slice(&time.to_le_bytes());
        c.extend_from_slice(&date.to_le_bytes());
        c.extend_from_slice(&crc.to_le_bytes());
        c.extend_from_slice(&csize.to_le_bytes());
        c.extend_from_slice(&usize_.to_le_bytes());
        c.extend_from_slice(&(name.len() as u16).to_le_bytes());
        c.extend_from_slice(&[0; 12]); // extra, comment, disk, internal attrs, external attrs
        c.extend_from_slice(&offset.to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        self.count += 1;
    }

    /// A sink deflating one new entry's content as it is written (with the
    /// writer's deflater), at most `limit` bytes.
    pub fn sink(&mut self, limit: usize) -> DeflateSink<'_> {
        let deflater = if self.level == 0 {
            None
        } else {
            let level = self.level;
            let c = self
                .deflater
                .get_or_insert_with(|| Compress::new(Compression::new(level), false));
            c.reset();
            Some(c)
        };
        DeflateSink {
            deflater,
            crc: crc32fast::Hasher::new(),
            pending: Vec::with_capacity(SINK_CHUNK),
            out: Vec::with_capacity(16 << 10),
            total: 0,
            limit,
            exceeded: false,
        }
    }

    /// Add content deflated by a [`DeflateSink`] under `name`.
    pub fn add_prepared(&mut self, name: &str, p: &Prepared, time: u16, date: u16) {
        self.entry(
            name,
            p.method,
            p.crc,
            p.data.len() as u32,
            p.usize,
            time,
            date,
            &p.data,
        );
    }

    /// Copy entry `i` of `a` without inflating it.
    pub fn copy_raw(&mut self, a: &Archive<'_>, i: usize) {
        let e = &a.entries[i];
        let raw = a.raw(i);
        self.entry(
            &e.name, e.method, e.crc, e.csize, e.usize, e.time, e.date, raw,
        );
    }

    /// Add `content` under `name`, deflated.
    pub fn add(
        &mut self,
        name: &str,
        content: &[u8],
        time: u16,
        date: u16,
        stored: bool,
    ) -> Result<(), ZipError> {
        if content.len() > u32::MAX as usize / 2 {
            return err(format!("part {name} is too large for a ZIP entry"));
        }
        let crc = crc32fast::hash(content);
        if stored || self.level == 0 {
            let n = content.len() as u32;
            self.entry(name, 0, crc, n, n, time, date, content);
            return Ok(());
        }
        let level = self.level;
        let c = match self.deflater.as_mut() {
            Some(c) => {
                c.reset();
                c
            }
            None => self
                .deflater
                .insert(Compress::new(Compression::new(level), false)),
        };
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.reserve(content.len() / 4 + 1024);
        loop {
            let consumed = c.total_in() as usize;
            let status = c
                .compress_vec(&content[consumed..], &mut buf, FlushCompress::Finish)
                .map_err(|x| ZipError(format!("deflate failed: {x}")))?;
            if status == Status::StreamEnd {
                break;
            }
            buf.reserve(buf.capacity().max(4096));
        }
        if buf.len() >= content.len() {
            // Incompressible (e.g. an image): store it.
            self.entry(
                name,
                0,
                crc,
                content.len() as u32,
                content.len() as u32,
                time,
                date,
                content,
            );
        } else {
            self.entry(
                name,
                8,
                crc,
                buf.len() as u32,
                content.len() as u32,
                time,
                date,
                &buf,
            );
        }
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        let cd_offset = self.out.len() as u32;
        let cd_size = self.central.len() as u32;
        self.out.extend_from_slice(&self.central);
        let o = &mut self.out;
        o.extend_from_slice(&EOCD_SIG.to_le_bytes());
        o.extend_from_slice(&[0; 4]);
        o.extend_from_slice(&(self.count as u16).to_le_bytes());
        o.extend_from_slice(&(self.count as u16).to_le_bytes());
        o.extend_from_slice(&cd_size.to_le_bytes());
        o.extend_from_slice(&cd_offset.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        self.out
    }
}
