//! A component of another world entirely: it must be refused at load.
wit_bindgen::generate!({ world: "other", path: "wit" });

struct Other;

impl Guest for Other {
    fn run() -> String {
        "not a plugin".into()
    }
}

export!(Other);
