//! The routing tree of `[alerting.route]`, resolved once per load: each route's matchers
//! compiled and what it inherits filled in, so finding where a notification goes is a walk
//! down the tree with nothing left to default. Pure.

use super::config::RouteConfig;
use super::silence::{parse_matcher, Compiled};
use crate::store::Labels;
use std::time::Duration;

/// Where one route sends its groups, and how it groups them.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    /// The route's place in the tree (`route`, `route.routes[1]`...): part of a group's identity.
    pub path: String,
    pub channels: Vec<String>,
    /// `None`: every label (Alertmanager's `...`, no grouping).
    pub group_by: Option<Vec<String>>,
    pub group_wait_ms: i64,
    pub group_interval_ms: i64,
    pub repeat_ms: i64,
}

impl Leaf {
    /// The values of the grouping labels of `labels` (an empty value for a missing label).
    pub fn group_labels(&self, labels: &Labels) -> Labels {
        match &self.group_by {
            None => labels.clone(),
            Some(names) => names
                .iter()
                .map(|n| (n.clone(), labels.get(n).cloned().unwrap_or_default()))
                .collect(),
        }
    }
}

#[derive(Debug)]
struct Node {
    matchers: Vec<Compiled>,
    leaf: Leaf,
    continue_: bool,
    children: Vec<Node>,
}

/// The resolved tree.
#[derive(Debug)]
pub struct Routes {
    root: Node,
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Routes {
    /// Resolves `config` (the top route) with `default_channels` for a top route naming none.
    pub fn new(config: &RouteConfig, default_channels: &[String]) -> Result<Routes, String> {
        let top = Leaf {
            path: "route".into(),
            channels: config
                .channels
                .clone()
                .unwrap_or_else(|| default_channels.to_vec()),
            group_by: Some(Vec::new()),
            group_wait_ms: 30_000,
            group_interval_ms: 300_000,
            repeat_ms: 4 * 3_600_000,
        };
        Ok(Routes {
            root: node(config, &top, "route", true)?,
        })
    }

    /// The routes a notification with `labels` goes to (at least one: the top route takes what
    /// no child does).
    pub fn leaves_for(&self, labels: &Labels) -> Vec<&Leaf> {
        let mut out = Vec::new();
        walk(&self.root, labels, &mut out);
        out
    }

    /// Every channel some route sends to.
    pub fn channels(&self) -> Vec<&str> {
        fn all<'a>(n: &'a Node, out: &mut Vec<&'a str>) {
            out.extend(n.leaf.channels.iter().map(String::as_str));
            for c in &n.children {
                all(c, out);
            }
        }
        let mut out = Vec::new();
        all(&self.root, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn node(c: &RouteConfig, parent: &Leaf, path: &str, top: bool) -> Result<Node, String> {
    let group_by = match &c.group_by {
        Some(names) if names.iter().any(|n| n == "...") => None,
        Some(names) => Some(names.clone()),
        None => parent.group_by.clone(),
    };
    let leaf = Leaf {
        path: path.to_string(),
        channels: c
            .channels
            .clone()
            .unwrap_or_else(|| parent.channels.clone()),
        group_by,
        group_wait_ms: c.group_wait.map_or(parent.group_wait_ms, ms),
        group_interval_ms: c.group_interval.map_or(parent.group_interval_ms, ms),
        repeat_ms: c.repeat_interval.map_or(parent.repeat_ms, ms),
    };
    if leaf.group_interval_ms <= 0 || leaf.repeat_ms <= 0 {
        return Err(format!(
            "alerting.{path}: group_interval and repeat_interval must be more than 0s"
        ));
    }
    if top && !c.matchers.is_empty() {
        return Err("alerting.route: the top route takes every alert; put matchers on its [[alerting.route.routes]]".into());
    }
    let matchers = c
        .matchers
        .iter()
        .map(|m| parse_matcher(m).and_then(Compiled::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("alerting.{path}.matchers: {e}"))?;
    let children = c
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| node(r, &leaf, &format!("{path}.routes[{i}]"), false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Node {
        matchers,
        leaf,
        continue_: c.continue_,
        children,
    })
}

/// Alertmanager's walk: into each matching child in order (stopping after the first unless it
/// says `continue`); a node no child of which matched takes the notification itself.
fn walk<'a>(n: &'a Node, labels: &Labels, out: &mut Vec<&'a Leaf>) {
    let mut matched = false;
    for child in &n.children {
        if child.matchers.iter().all(|m| m.matches(labels)) {
            walk(child, labels, out);
            matched = true;
            if !child.continue_ {
                break;
            }
        }
    }
    if !matched {
        out.push(&n.leaf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(toml_text: &str) -> Routes {
        let c: RouteConfig = toml::from_str(toml_text).unwrap();
        Routes::new(&c, &["log".to_string()]).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn channels(r: &Routes, l: &Labels) -> Vec<Vec<String>> {
        r.leaves_for(l).iter().map(|l| l.channels.clone()).collect()
    }

    #[test]
    fn the_first_matching_route_takes_a_notification_and_the_top_takes_the_rest() {
        let r = routes(
            r#"
            channels = ["email"]
            group_by = ["alertname"]
            [[routes]]
            matchers = ['severity = "critical"']
            channels = ["pager"]
            [[routes]]
            matchers = ['severity =~ "critical|warning"']
            channels = ["chat"]
            "#,
        );
        assert_eq!(
            channels(&r, &labels(&[("severity", "critical")])),
            [["pager"]]
        );
        assert_eq!(
            channels(&r, &labels(&[("severity", "warning")])),
            [["chat"]]
        );
        assert_eq!(channels(&r, &labels(&[("severity", "info")])), [["email"]]);
        let leaf = r.leaves_for(&labels(&[("severity", "critical")]))[0];
        assert_eq!(
            leaf.group_by,
            Some(vec!["alertname".to_string()]),
            "inherited"
        );
        assert_eq!(leaf.group_wait_ms, 30_000, "Alertmanager's default");
    }

    #[test]
    fn continue_goes_on_to_the_next_matching_sibling_and_children_go_deeper() {
        let r = routes(
            r#"
            [[routes]]
            matchers = ['team = "shop"']
            channels = ["shop"]
            continue = true
            [[routes.routes]]
            matchers = ['severity = "critical"']
            channels = ["shop-pager"]
            group_wait = "0s"
            [[routes]]
            matchers = ['severity = "critical"']
            channels = ["pager"]
            "#,
        );
        let got = channels(&r, &labels(&[("team", "shop"), ("severity", "critical")]));
        assert_eq!(got, [vec!["shop-pager"], vec!["pager"]]);
        let got = channels(&r, &labels(&[("team", "shop"), ("severity", "info")]));
        assert_eq!(got, [["shop"]]);
        assert_eq!(channels(&r, &labels(&[])), [["log"]], "default_channels");
        assert_eq!(r.channels(), ["log", "pager", "shop", "shop-pager"]);
    }

    #[test]
    fn grouping_labels_are_the_named_ones_or_every_label() {
        let r = routes("group_by = [\"alertname\", \"site\"]");
        let leaf = r.leaves_for(&Labels::new())[0];
        assert_eq!(
            leaf.group_labels(&labels(&[("alertname", "a"), ("item", "i1")])),
            labels(&[("alertname", "a"), ("site", "")])
        );
        let every = routes("group_by = [\"...\"]");
        let l = labels(&[("alertname", "a"), ("item", "i1")]);
        assert_eq!(every.leaves_for(&l)[0].group_labels(&l), l);
    }

    #[test]
    fn a_bad_matcher_or_a_matcher_on_the_top_route_is_refused() {
        let bad: RouteConfig = toml::from_str("[[routes]]\nmatchers = ['severity']").unwrap();
        assert!(Routes::new(&bad, &[])
            .unwrap_err()
            .contains("alerting.route.routes[0].matchers"));
        let top: RouteConfig = toml::from_str("matchers = ['a = \"b\"']").unwrap();
        assert!(Routes::new(&top, &[]).is_err());
    }
}
