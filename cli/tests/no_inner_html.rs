//! The front end never parses text as HTML: no script in web/static writes markup strings
//! (`innerHTML`, `outerHTML`, `insertAdjacentHTML`, `document.write`, ...; clearing with an empty
//! string literal is the one use allowed), so a class or modality name from a dataset can only
//! ever show as text. The templates hold nothing the Content-Security-Policy refuses (inline
//! scripts, `on...=` handlers, `style` attributes) and never switch off askama's escaping.

use std::path::{Path, PathBuf};

fn web(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../web")
        .join(sub)
}

fn files(dir: &Path, extension: &str) -> Vec<(String, String)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == extension))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no .{extension} file in {}", dir.display());
    out
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// Whether the text after a property name is `= ""` or `= ''` (and nothing more).
fn clears_with_empty_literal(after: &str) -> bool {
    let rest = after.trim_start();
    let Some(rest) = rest.strip_prefix('=') else {
        return false;
    };
    if rest.starts_with('=') {
        return false; // a comparison reads the markup; not a write, but not needed either
    }
    let rest = rest.trim_start();
    let Some(rest) = rest
        .strip_prefix("\"\"")
        .or_else(|| rest.strip_prefix("''"))
        .or_else(|| rest.strip_prefix("``"))
    else {
        return false;
    };
    matches!(
        rest.trim_start().chars().next(),
        None | Some(';' | ',' | ')' | '}')
    )
}

/// Every use of an HTML-parsing sink in `source`, as "line: excerpt".
fn html_sinks(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    let properties = ["innerHTML", "outerHTML"];
    let calls = [
        "insertAdjacentHTML",
        "document.write",
        "createContextualFragment",
        "parseFromString",
        "srcdoc",
    ];
    for name in properties.iter().chain(calls.iter()) {
        for (at, _) in source.match_indices(name) {
            let after = &source[at + name.len()..];
            if properties.contains(name) && clears_with_empty_literal(after) {
                continue;
            }
            let end = after.find('\n').unwrap_or(after.len()).min(80);
            found.push(format!(
                "line {}: {name}{}",
                line_of(source, at),
                &after[..end]
            ));
        }
    }
    found
}

#[test]
fn the_sink_finder_flags_markup_writes_and_lets_clearing_pass() {
    for bad in [
        "t.innerHTML = `<th>${name}</th>`;",
        "t.innerHTML = name;",
        "t.innerHTML += \"\";",
        "t.outerHTML = \"<b>\" + x;",
        "box.insertAdjacentHTML(\"beforeend\", row);",
        "document.write(x);",
        "document.writeln(x);",
    ] {
        assert_eq!(html_sinks(bad).len(), 1, "{bad}");
    }
    for fine in [
        "t.innerHTML = \"\";",
        "t.innerHTML = '' ;",
        "t.textContent = name;",
    ] {
        assert!(html_sinks(fine).is_empty(), "{fine}");
    }
}

#[test]
fn no_script_puts_text_into_html() {
    let mut found = Vec::new();
    for (name, source) in files(&web("static"), "js") {
        found.extend(
            html_sinks(&source)
                .into_iter()
                .map(|s| format!("{name} {s}")),
        );
    }
    assert!(
        found.is_empty(),
        "text parsed as HTML (build elements with dom.js's el() instead):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_page_loads_the_dom_helper_before_the_scripts_that_use_it() {
    let base = std::fs::read_to_string(web("templates/base.html")).unwrap();
    let helper = base.find("/static/dom.js").expect("base.html loads dom.js");
    let app = base.find("/static/app.js").unwrap();
    assert!(helper < app, "dom.js must come before app.js in base.html");
}

/// What the Content-Security-Policy would refuse in a template, or askama's escaping undone.
fn template_problems(name: &str, html: &str) -> Vec<String> {
    let mut found = Vec::new();
    let lower = html.to_ascii_lowercase();
    for (at, _) in lower.match_indices("<script") {
        let tag_end = lower[at..].find('>').map_or(lower.len(), |e| at + e);
        let tag = &lower[at..tag_end];
        let inline = !tag.contains(" src=") || !lower[tag_end + 1..].starts_with("</script>");
        if inline {
            found.push(format!("{name} line {}: inline script", line_of(html, at)));
        }
    }
    let bytes = lower.as_bytes();
    for (at, _) in lower.match_indices("on") {
        // An attribute `on<letters>=` right after whitespace inside a tag.
        let starts_attribute = at > 0 && bytes[at - 1].is_ascii_whitespace();
        let rest = &lower[at + 2..];
        let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
        let inside_tag = lower[..at].rfind('<') > lower[..at].rfind('>');
        if starts_attribute && inside_tag && letters > 0 && rest[letters..].starts_with('=') {
            found.push(format!(
                "{name} line {}: inline event handler on{}",
                line_of(html, at),
                &rest[..letters]
            ));
        }
    }
    for (what, needle) in [
        ("style attribute", " style="),
        ("<style> element", "<style"),
        ("unescaped output", "|safe"),
        ("javascript: URL", "javascript:"),
    ] {
        for (at, _) in lower.match_indices(needle) {
            found.push(format!("{name} line {}: {what}", line_of(html, at)));
        }
    }
    found
}

#[test]
fn the_template_check_finds_what_the_policy_refuses() {
    assert_eq!(template_problems("t", "<script>alert(1)</script>").len(), 1);
    assert_eq!(
        template_problems("t", "<button onclick=\"go()\">x</button>").len(),
        1
    );
    assert_eq!(
        template_problems("t", "<span style=\"width: 3%\"></span>").len(),
        1
    );
    assert_eq!(template_problems("t", "{{ name|safe }}").len(), 1);
    assert!(template_problems(
        "t",
        "<script src=\"/static/x.js\" defer></script><p>one on two</p><a data-then=\"/\">x</a>"
    )
    .is_empty());
}

#[test]
fn no_template_holds_inline_script_handlers_styles_or_unescaped_output() {
    let mut found = Vec::new();
    for (name, html) in files(&web("templates"), "html") {
        found.extend(template_problems(&name, &html));
    }
    assert!(
        found.is_empty(),
        "the Content-Security-Policy refuses these (move scripts to web/static, styles to \
         style.css, pass values as data-* attributes):\n{}",
        found.join("\n")
    );
}
