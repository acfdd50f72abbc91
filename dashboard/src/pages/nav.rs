//! The navigation and range selector every page shares.

use crate::format::input_time;
use crate::query::{ViewQuery, PRESETS};

/// The navigation and range selector every page shares.
pub struct Nav {
    /// Name of the current page.
    pub active: &'static str,
    /// (href, label, name) of every page.
    pub pages: Vec<(&'static str, &'static str, &'static str)>,
    /// Whether the page has a time range.
    pub show_range: bool,
    /// (href, label, selected) of each preset range.
    pub ranges: Vec<(String, &'static str, bool)>,
    /// Values of the custom range inputs (`datetime-local`, UTC).
    pub from: String,
    /// See `from`.
    pub to: String,
    /// Parameters the range form carries along (the page's filters).
    pub hidden: Vec<(String, String)>,
    /// Seconds between reloads, when auto-refresh is on.
    pub refresh: Option<u32>,
    /// (href, label, selected) of the auto-refresh choices.
    pub refreshes: Vec<(String, &'static str, bool)>,
}

const PAGES: [(&str, &str, &str); 9] = [
    ("/", "Overview", "overview"),
    ("/requests", "Requests", "requests"),
    ("/sessions", "Sessions", "sessions"),
    ("/users", "Users", "users"),
    ("/models", "Models", "models"),
    ("/properties", "Properties", "properties"),
    ("/keys", "Keys", "keys"),
    ("/budgets", "Budgets", "budgets"),
    ("/reconcile", "Reconcile", "reconcile"),
];

impl Nav {
    pub(crate) fn new(active: &'static str, path: &str, v: Option<&ViewQuery>) -> Self {
        let mut nav = Self {
            active,
            pages: PAGES.to_vec(),
            show_range: v.is_some(),
            ranges: Vec::new(),
            from: String::new(),
            to: String::new(),
            hidden: Vec::new(),
            refresh: None,
            refreshes: Vec::new(),
        };
        if let Some(v) = v {
            nav.ranges = PRESETS
                .iter()
                .map(|(name, label, _)| {
                    (
                        v.link(
                            path,
                            &[
                                ("range", Some(name)),
                                ("from", None),
                                ("to", None),
                                ("cursor", None),
                            ],
                        ),
                        *label,
                        v.range.preset == Some(*name),
                    )
                })
                .collect();
            nav.refresh = v.refresh;
            nav.refreshes = [("off", "off"), ("30", "30 s"), ("60", "1 min")]
                .into_iter()
                .map(|(value, label)| {
                    let selected = v.refresh.map_or(value == "off", |r| r.to_string() == value);
                    let change = (value != "off").then_some(value);
                    (v.link(path, &[("refresh", change)]), label, selected)
                })
                .collect();
            nav.from = input_time(v.range.from_ms);
            nav.to = input_time(v.range.to_ms);
            nav.hidden = v
                .params
                .iter()
                .filter(|(k, _)| !["range", "from", "to", "cursor"].contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        nav
    }
}
