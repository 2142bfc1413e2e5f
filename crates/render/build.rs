//! Compiles the templates under the workspace's templates/ directory into the library
//! (minijinja-embed); `Templates::new` loads them, then any `--templates DIR` overrides.

fn main() {
    // Only `*.j2` files are templates; READMEs next to them are not.
    minijinja_embed::embed_templates!("../../templates", &[".j2"][..]);
}
