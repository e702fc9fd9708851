//! Native driver for profiling: `render TEMPLATE DATA OUT [N]`.
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let t = std::fs::read(&a[1]).unwrap();
    let d = std::fs::read_to_string(&a[2]).unwrap();
    let n: usize = a.get(4).map(|x| x.parse().unwrap()).unwrap_or(1);
    let opts = export_host_docx::Options::default();
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    for _ in 0..n {
        out = match export_host_docx::render_docx(&t, &d, &opts) {
            Ok(o) => o,
            Err(e) => panic!("{e:?}"),
        };
    }
    eprintln!("avg {:?}", start.elapsed() / n as u32);
    std::fs::write(&a[3], out).unwrap();
}
