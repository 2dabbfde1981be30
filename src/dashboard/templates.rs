//! The dashboard's templates: the built-in set compiled into the binary, overridden file by file
//! by an optional folder (`[dashboard] templates`) that is re-read when its files change. So an
//! installed binary, or a container that mounts only the pipeline, serves the page as shipped,
//! and a user who wants a different headline writes only `_headline.html`.
//!
//! A template that fails to parse or render never blanks the page: the last good version
//! renders, with the error shown.

use minijinja::Environment;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The shipped templates, script and style (the repository's `templates/` folder), by file name.
/// `every_file_of_the_templates_folder_is_built_in` keeps this list and the folder the same.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("_alerts.html", include_str!("../../templates/_alerts.html")),
    (
        "_headline.html",
        include_str!("../../templates/_headline.html"),
    ),
    ("_health.html", include_str!("../../templates/_health.html")),
    (
        "_metrics.html",
        include_str!("../../templates/_metrics.html"),
    ),
    (
        "_topology.html",
        include_str!("../../templates/_topology.html"),
    ),
    (
        "dashboard.css",
        include_str!("../../templates/dashboard.css"),
    ),
    (
        "dashboard.html",
        include_str!("../../templates/dashboard.html"),
    ),
    ("dashboard.js", include_str!("../../templates/dashboard.js")),
    ("layout.html", include_str!("../../templates/layout.html")),
    ("panels.html", include_str!("../../templates/panels.html")),
    (
        "workbench.html",
        include_str!("../../templates/workbench.html"),
    ),
    ("workbench.js", include_str!("../../templates/workbench.js")),
];

/// The workbench's code editor (CodeMirror 6 and a Rhai mode, `editor/`), bundled by
/// `editor/build.sh` and served from the binary: no CDN, and it works offline. Not a template
/// (a minified bundle is not for overriding), and not parsed as one.
pub const EDITOR_JS: &str = include_str!("../../editor/dist/editor.js");

/// The built-in set and the override folder, with the last version that parsed.
pub struct Templates {
    /// `[dashboard] templates`, when set; it need not exist (yet).
    dir: Option<PathBuf>,
    state: Mutex<State>,
}

/// One file of the folder that overrides (or adds to) the built-in set.
type Override = (PathBuf, Vec<u8>);

struct State {
    good: Environment<'static>,
    /// Override files the current environment (or the last failed attempt) was built from.
    seen: Vec<Override>,
    /// Why the newest files are not in use.
    error: Option<String>,
}

/// The folder's template, script and style files; a folder that is not there overrides nothing.
fn read_dir(dir: Option<&Path>) -> std::io::Result<Vec<Override>> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
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

/// Where a template came from, for error messages: the override's path, or `built-in NAME`.
fn shown(name: &str, overrides: &[Override]) -> String {
    match overrides
        .iter()
        .find(|(p, _)| p.file_name().is_some_and(|f| f == name))
    {
        Some((path, _)) => path.display().to_string(),
        None => format!("built-in {name}"),
    }
}

fn build(overrides: &[Override]) -> Result<Environment<'static>, String> {
    let mut env = Environment::new();
    // Escaping on for everything but the script and style files we serve ourselves.
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".js") || name.ends_with(".css") {
            minijinja::AutoEscape::None
        } else {
            minijinja::AutoEscape::Html
        }
    });
    for (name, source) in BUILT_IN {
        if !overrides
            .iter()
            .any(|(p, _)| p.file_name().is_some_and(|f| f == *name))
        {
            env.add_template(name, source)
                .map_err(|e| describe(&e, overrides))?;
        }
    }
    for (path, bytes) in overrides {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let source = String::from_utf8(bytes.clone())
            .map_err(|_| format!("{}: not UTF-8", path.display()))?;
        env.add_template_owned(name, source)
            .map_err(|e| describe(&e, overrides))?;
    }
    Ok(env)
}

fn describe(e: &minijinja::Error, overrides: &[Override]) -> String {
    let file = e
        .name()
        .map(|n| shown(n, overrides))
        .unwrap_or_else(|| "templates".into());
    match e.line() {
        Some(line) => format!(
            "{file}:{line}: {}",
            e.detail().unwrap_or(&e.kind().to_string())
        ),
        None => format!("{file}: {e}"),
    }
}

impl Templates {
    /// The built-in set with the folder's files over it. At start a broken override is an
    /// error naming its file and line (there is no good version of it yet); a folder that is
    /// not there is noted and the built-in set serves (it is read again on every render, so a
    /// folder created later applies).
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Templates> {
        let files = read_dir(dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the templates in {} (dashboard.templates): {e}",
                dir.unwrap_or(Path::new("")).display()
            )
        })?;
        if let Some(dir) = dir.filter(|d| !d.is_dir()) {
            tracing::warn!(folder = %dir.display(), "dashboard.templates names no folder; the built-in templates serve (a folder created there later overrides them file by file)");
        }
        let good = build(&files)
            .map_err(|e| anyhow::anyhow!("{e} (a template of dashboard.templates)"))?;
        Ok(Templates {
            dir: dir.map(Path::to_path_buf),
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
        if let Ok(files) = read_dir(self.dir.as_deref()) {
            if files != st.seen {
                match build(&files) {
                    Ok(env) => {
                        tracing::info!(folder = %self.dir.as_deref().unwrap_or(Path::new("")).display(), overrides = files.len(), "templates reloaded");
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
                let msg = describe(&e, &st.seen);
                tracing::error!(error = %msg, "template failed to render");
                let html = format!(
                    "<!doctype html><title>runner</title><p style=\"color:#b00\">template error: {}</p>",
                    minijinja::HtmlEscape(&msg)
                );
                (html, Some(msg))
            }
        }
    }

    /// A script or style file served as it is: the folder's, else the built-in one.
    pub fn asset(&self, name: &str) -> Option<String> {
        let st = self.state.lock().unwrap();
        match st
            .seen
            .iter()
            .find(|(p, _)| p.file_name().is_some_and(|f| f == name))
        {
            Some((_, bytes)) => Some(String::from_utf8_lossy(bytes).to_string()),
            None => BUILT_IN
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, text)| text.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_templates_folder_is_built_in() {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut on_disk: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        on_disk.sort();
        let built_in: Vec<String> = BUILT_IN.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            built_in, on_disk,
            "add the new file of templates/ to BUILT_IN"
        );
    }

    fn page(t: &Templates) -> (String, Option<String>) {
        t.render(
            "_headline.html",
            minijinja::context! { headline => Vec::<String>::new() },
        )
    }

    #[test]
    fn without_a_folder_the_built_in_templates_render() {
        let t = Templates::load(None).unwrap();
        let (html, error) = t.render("layout.html", minijinja::context! {});
        assert!(
            error.is_none() && html.contains("<html"),
            "{error:?} {html}"
        );
        assert!(t.asset("dashboard.js").is_some_and(|js| !js.is_empty()));
        let missing = tempfile::tempdir().unwrap().path().join("nowhere");
        let t = Templates::load(Some(&missing)).unwrap();
        assert!(page(&t).1.is_none());
    }

    #[test]
    fn one_file_of_the_folder_overrides_its_built_in_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert!(!page(&t).0.contains("OURS"));
        std::fs::write(dir.path().join("_headline.html"), "<p>OURS</p>").unwrap();
        let (html, error) = page(&t);
        assert!(error.is_none() && html.contains("OURS"), "{error:?} {html}");
        // The rest of the page is still the built-in one.
        let (html, _) = t.render("layout.html", minijinja::context! {});
        assert!(html.contains("<html"));
        std::fs::write(dir.path().join("_headline.html"), "<p>{% if %}</p>").unwrap();
        let (html, error) = page(&t);
        assert!(html.contains("OURS"), "the last good version stays: {html}");
        let error = error.unwrap();
        assert!(
            error.starts_with(&format!(
                "{}:1:",
                dir.path().join("_headline.html").display()
            )),
            "{error}"
        );
    }

    #[test]
    fn a_broken_override_at_start_names_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("panels.html"), "ok\n{% for %}").unwrap();
        let err = Templates::load(Some(dir.path())).err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("{}:2:", dir.path().join("panels.html").display())),
            "{err}"
        );
        assert!(err.contains("dashboard.templates"), "{err}");
    }
}
