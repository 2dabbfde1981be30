//! The dashboard's templates, reloaded when their files change. A template that fails to parse
//! or render never blanks the page: the last good version renders, with the error shown.

use minijinja::Environment;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The template folder and the last version of it that parsed.
pub struct Templates {
    dir: PathBuf,
    state: Mutex<State>,
}

struct State {
    good: Environment<'static>,
    /// Contents the current environment (or the last failed attempt) was built from.
    seen: Vec<(PathBuf, Vec<u8>)>,
    /// Why the newest files are not in use.
    error: Option<String>,
}

fn read_dir(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .extension()
            .is_some_and(|e| e == "html" || e == "js" || e == "css")
        {
            files.push((path.clone(), std::fs::read(&path)?));
        }
    }
    files.sort();
    Ok(files)
}

fn build(files: &[(PathBuf, Vec<u8>)]) -> Result<Environment<'static>, String> {
    let mut env = Environment::new();
    // Escaping on for everything but the script and style files we serve ourselves.
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".js") || name.ends_with(".css") {
            minijinja::AutoEscape::None
        } else {
            minijinja::AutoEscape::Html
        }
    });
    for (path, bytes) in files {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let source = String::from_utf8(bytes.clone())
            .map_err(|_| format!("{}: not UTF-8", path.display()))?;
        env.add_template_owned(name, source)
            .map_err(|e| describe(&e, path))?;
    }
    Ok(env)
}

fn describe(e: &minijinja::Error, path: &Path) -> String {
    let file = e
        .name()
        .map(|n| path.with_file_name(n))
        .unwrap_or_else(|| path.to_path_buf());
    match e.line() {
        Some(line) => format!(
            "{}:{line}: {}",
            file.display(),
            e.detail().unwrap_or(&e.kind().to_string())
        ),
        None => format!("{}: {e}", file.display()),
    }
}

impl Templates {
    /// Loads the folder; at start a broken template is an error (there is no good version yet).
    pub fn load(dir: &Path) -> anyhow::Result<Templates> {
        let files = read_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot read templates in {}: {e}", dir.display()))?;
        let good = build(&files).map_err(anyhow::Error::msg)?;
        Ok(Templates {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                good,
                seen: files,
                error: None,
            }),
        })
    }

    /// Renders `name`; picks up changed files first. Returns the HTML and the error, if the
    /// newest templates could not be used.
    pub fn render(&self, name: &str, ctx: minijinja::Value) -> (String, Option<String>) {
        let mut st = self.state.lock().unwrap();
        if let Ok(files) = read_dir(&self.dir) {
            if files != st.seen {
                match build(&files) {
                    Ok(env) => {
                        tracing::info!(folder = %self.dir.display(), "templates reloaded");
                        st.good = env;
                        st.error = None;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "template rejected; the previous version stays");
                        st.error = Some(e);
                    }
                }
                st.seen = files;
            }
        }
        let error = st.error.clone();
        let ctx = minijinja::context! { template_error => error.clone(), ..ctx };
        match st.good.get_template(name).and_then(|t| t.render(&ctx)) {
            Ok(html) => (html, error),
            Err(e) => {
                let msg = describe(&e, &self.dir.join(name));
                tracing::error!(error = %msg, "template failed to render");
                let html = format!(
                    "<!doctype html><title>runner</title><p style=\"color:#b00\">template error: {}</p>",
                    minijinja::HtmlEscape(&msg)
                );
                (html, Some(msg))
            }
        }
    }

    /// A file from the folder served as it is (the page's script and style).
    pub fn asset(&self, name: &str) -> Option<String> {
        let st = self.state.lock().unwrap();
        st.seen
            .iter()
            .find(|(p, _)| p.file_name().is_some_and(|f| f == name))
            .map(|(_, b)| String::from_utf8_lossy(b).to_string())
    }
}
