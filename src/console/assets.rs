//! The page's files, embedded in the binary: the console serves everything
//! itself (no CDN, no build step; the lab's browsers may be offline).

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Its name under `/assets/` (`console.html` is served at `/`).
    pub name: &'static str,
    /// Its Content-Type.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
}

/// Every embedded file (src/console/assets/).
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "console.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("assets/console.html"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/console.css"),
    },
];

/// The page served at `/` should `console.html` ever be left out.
const FALLBACK_PAGE: &str = "<!doctype html><meta charset=utf-8><title>stringdriver console</title>\
<p>The console's page is not built into this binary; the API is at /api/meta, /api/call and /api/events.";

/// The file named `name`.
pub fn get(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The page (`console.html`).
pub fn page() -> &'static str {
    get("console.html").map_or(FALLBACK_PAGE, |a| a.body)
}
