// The workbench's editor: CodeMirror 6 with a small Rhai mode, line numbers, undo, and the
// compile step's problems underlined at their line and column. Bundled by build.sh into
// dist/editor.js, which the runner serves from its binary as /assets/vendor/editor.js; the page
// reaches it as the global `RunnerEditor`.
import { EditorView, keymap, lineNumbers, highlightActiveLine, drawSelection } from "@codemirror/view";
import { EditorState } from "@codemirror/state";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import {
  StreamLanguage, syntaxHighlighting, defaultHighlightStyle, bracketMatching, indentOnInput,
} from "@codemirror/language";
import { lintGutter, setDiagnostics } from "@codemirror/lint";

const KEYWORDS = new Set([
  "let", "const", "fn", "if", "else", "switch", "while", "loop", "do", "until", "for", "in",
  "return", "break", "continue", "throw", "try", "catch", "import", "export", "as", "private",
  "this", "global", "true", "false",
]);
const BUILTINS = new Set(["field", "field_is", "field_in", "lookup", "bucket", "print", "debug"]);

// Rhai's tokens, as far as colour goes: comments, strings (also `backtick` ones), numbers,
// keywords, the runner's selector functions, and `#{` map literals.
const rhai = StreamLanguage.define({
  name: "rhai",
  startState: () => ({ comment: false }),
  token(stream, state) {
    if (state.comment) {
      state.comment = !stream.skipTo("*/");
      if (!state.comment) stream.match("*/"); else stream.skipToEnd();
      return "comment";
    }
    if (stream.eatSpace()) return null;
    if (stream.match("//")) { stream.skipToEnd(); return "comment"; }
    if (stream.match("/*")) { state.comment = true; return "comment"; }
    const quote = stream.peek();
    if (quote === '"' || quote === "`" || quote === "'") {
      stream.next();
      let escaped = false, ch;
      while ((ch = stream.next()) != null) {
        if (ch === quote && !escaped) break;
        escaped = !escaped && ch === "\\";
      }
      return "string";
    }
    if (stream.match(/^(0x[0-9a-fA-F_]+|[0-9][0-9_]*(\.[0-9_]+)?(e[+-]?[0-9]+)?)/)) return "number";
    if (stream.match("#{")) return "bracket";
    if (stream.match(/^[A-Za-z_][A-Za-z0-9_]*/)) {
      const word = stream.current();
      if (KEYWORDS.has(word)) return "keyword";
      if (BUILTINS.has(word)) return "variableName.standard";
      return stream.peek() === ":" ? "propertyName" : "variableName";
    }
    stream.next();
    return null;
  },
  languageData: { commentTokens: { line: "//", block: { open: "/*", close: "*/" } } },
});

// An editor in `parent` holding `doc`; `onChange(text)` hears every edit.
export function create(parent, doc, onChange) {
  return new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [
        lineNumbers(), history(), drawSelection(), highlightActiveLine(), bracketMatching(),
        indentOnInput(), syntaxHighlighting(defaultHighlightStyle), rhai, lintGutter(),
        keymap.of([...defaultKeymap, ...historyKeymap, indentWithTab]),
        EditorView.updateListener.of((u) => { if (u.docChanged) onChange(u.state.doc.toString()); }),
        EditorView.lineWrapping,
        EditorView.contentAttributes.of({ "aria-label": "metric script" }),
      ],
    }),
  });
}

export function getText(view) { return view.state.doc.toString(); }

export function setText(view, text) {
  view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
}

// Underlines each problem ({line, column, message}, 1-based; no line: the first) from its
// column to the end of its line.
export function showProblems(view, problems) {
  const doc = view.state.doc;
  const marks = problems.map((p) => {
    const line = doc.line(Math.min(Math.max(p.line || 1, 1), doc.lines));
    const from = Math.min(line.from + Math.max((p.column || 1) - 1, 0), line.to);
    const to = Math.max(line.to, Math.min(from + 1, doc.length));
    return { from, to, severity: "error", message: p.message };
  });
  view.dispatch(setDiagnostics(view.state, marks));
}
