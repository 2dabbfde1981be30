//! Dashboard tokens, their roles, and the host check. With a token configured (`[dashboard]
//! token`, or named ones in `[dashboard.tokens]`), every route needs one, from an
//! `Authorization: Bearer` header or the cookie set on the first authorised load of the page,
//! which alone also takes a `?token=` query parameter (URL-decoded). Comparisons take the same
//! time whatever the guess, and a token is never written into a page: an authorised
//! `GET /?token=...` gets the cookie and a redirect to the same page without the token in its
//! address. The token's name and role travel with the request as a [`Caller`]: `viewer` reads
//! pages and APIs, `operator` also makes and expires silences, `editor` also changes metrics in
//! the workbench.

use super::Shared;
use crate::base::Secret;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// What a token may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read every page and API.
    #[default]
    Viewer,
    /// Also make and expire silences.
    Operator,
    /// Also check, try and save metrics in the workbench (it writes the pipeline's files).
    Editor,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Editor => "editor",
        })
    }
}

/// `[dashboard.tokens] <name> = { secret = "${OPS_TOKEN}", role = "operator" }`: a named token.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The token itself (use `${VAR}` so it stays out of the file).
    pub secret: Secret,
    /// `viewer`, `operator` or `editor` [default: viewer].
    #[serde(default)]
    pub role: Role,
}

/// The name the single `[dashboard] token` is recorded under (it is an operator token).
pub const SINGLE_TOKEN_NAME: &str = "operator";

/// Who made a request: the name of the token it carried (recorded as `created_by`) and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// A request to a dashboard with no token configured: it may read, not write.
    fn anonymous() -> Caller {
        Caller {
            name: "anonymous".into(),
            role: Role::Viewer,
        }
    }

    /// A 403 answer saying why, unless the caller has `role` (then `None`).
    pub fn refused(&self, role: Role, what: &str) -> Option<Response> {
        if self.role >= role {
            return None;
        }
        let why = match self.name.as_str() {
            "anonymous" => format!("{what} needs a dashboard token with the {role} role, and this dashboard has none: set [dashboard] token or [dashboard.tokens]"),
            name => format!("{what} needs the {role} role; the token {name:?} is a {}", self.role),
        };
        Some((StatusCode::FORBIDDEN, why + "\n").into_response())
    }
}

/// The cookie that carries the token after the first authorised load.
const COOKIE: &str = "runner_token";

/// Where a request's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Header,
    Query,
    Cookie,
}

/// The middleware: lets through requests with the token, answers 401 to the others.
pub(super) async fn require_token(
    State(state): State<Shared>,
    req: Request,
    next: Next,
) -> Response {
    let tokens = state.config.borrow().credentials();
    let mut req = req;
    if tokens.is_empty() {
        // A reload that removed the token does not open a dashboard bound beyond loopback.
        if !state.loopback && !state.config.borrow().allow_anonymous {
            return (StatusCode::UNAUTHORIZED, "this dashboard listens beyond loopback and its token was removed: set dashboard.token again").into_response();
        }
        req.extensions_mut().insert(Caller::anonymous());
        return next.run(req).await;
    }
    let page_load = req.method() == Method::GET && req.uri().path() == "/";
    let secrets: Vec<&str> = tokens
        .iter()
        .map(|(_, secret, _)| secret.expose())
        .collect();
    // `?token=` opens the page once (it sets the cookie and redirects the token out of the
    // address); elsewhere a token in a URL would land in proxy and server logs.
    let Some((from, which)) =
        authorised(&req, &secrets).filter(|(from, _)| *from != From::Query || page_load)
    else {
        return (StatusCode::UNAUTHORIZED, "a dashboard token is required (Authorization: Bearer <token>, or open the page once with ?token= to set a cookie)")
            .into_response();
    };
    let (name, secret, role) = &tokens[which];
    let token = secret.expose();
    req.extensions_mut().insert(Caller {
        name: name.clone(),
        role: *role,
    });
    let mut response = match (from, page_load) {
        // Keep the token out of the address bar, history and the page's own links.
        (From::Query, true) => {
            Redirect::to(&without_token(req.uri().query().unwrap_or(""))).into_response()
        }
        _ => next.run(req).await,
    };
    if from != From::Cookie {
        let cookie = format!(
            "{}; Path=/; HttpOnly; SameSite=Strict",
            serde_urlencoded::to_string([(COOKIE, token)]).unwrap_or_default()
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// The middleware that answers 421 to a request for another host while the dashboard listens
/// on loopback. A page elsewhere can point a name of its own at 127.0.0.1 (DNS rebinding) and
/// read the local dashboard as same-origin; its requests still carry that name as `Host`.
pub(super) async fn check_host(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    let allowed = state.config.borrow().allowed_hosts.clone();
    match host {
        Some(host) if state.loopback && !host_allowed(host, &allowed) => (
            StatusCode::MISDIRECTED_REQUEST,
            "this dashboard answers only to localhost and its dashboard.allowed_hosts\n",
        )
            .into_response(),
        _ => next.run(req).await,
    }
}

/// Whether `host` (a `Host` header: a name or address, maybe with a port) is loopback or one of
/// `allowed`.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name))
}

/// Which of the request's credentials holds one of `tokens`, and which token, if any.
fn authorised(req: &Request, tokens: &[&str]) -> Option<(From, usize)> {
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(i) = bearer.and_then(|b| which(b, tokens)) {
        return Some((From::Header, i));
    }
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    if let Some(i) = query
        .iter()
        .find_map(|(k, v)| (k == "token").then(|| which(v, tokens)).flatten())
    {
        return Some((From::Query, i));
    }
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'));
    for c in cookies {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(c.trim()).unwrap_or_default();
        if let Some(i) = pairs
            .iter()
            .find_map(|(k, v)| (k == COOKIE).then(|| which(v, tokens)).flatten())
        {
            return Some((From::Cookie, i));
        }
    }
    None
}

/// The index of the token `given` is; every token is compared, so the time says nothing of which.
fn which(given: &str, tokens: &[&str]) -> Option<usize> {
    tokens
        .iter()
        .map(|t| same(given, t))
        .enumerate()
        .fold(None, |found, (i, hit)| found.or(hit.then_some(i)))
}

/// Equal in constant time for equal lengths (the length of a guess is not a secret worth hiding).
fn same(given: &str, token: &str) -> bool {
    given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// The page address with its other query parameters, without `token`.
fn without_token(query: &str) -> String {
    let rest: Vec<(String, String)> = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != "token")
        .collect();
    match serde_urlencoded::to_string(&rest).unwrap_or_default() {
        q if q.is_empty() => "/".to_string(),
        q => format!("/?{q}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request {
        let mut b = axum::http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn the_token_is_accepted_from_header_decoded_query_or_cookie() {
        let token = "s3 cr&t=+";
        let tokens = ["viewer-secret", token];
        assert_eq!(
            authorised(
                &request("/", &[("Authorization", "Bearer s3 cr&t=+")]),
                &tokens
            ),
            Some((From::Header, 1))
        );
        assert_eq!(
            authorised(
                &request("/api/health?range=5m&token=s3%20cr%26t%3D%2B", &[]),
                &tokens
            ),
            Some((From::Query, 1))
        );
        assert_eq!(
            authorised(
                &request("/", &[("Cookie", "a=b; runner_token=s3+cr%26t%3D%2B")]),
                &tokens
            ),
            Some((From::Cookie, 1))
        );
        assert_eq!(
            authorised(
                &request("/", &[("Authorization", "Bearer viewer-secret")]),
                &tokens
            ),
            Some((From::Header, 0)),
            "each token is told apart"
        );
        assert_eq!(
            authorised(
                &request("/?token=s3%20cr", &[("Authorization", "Bearer nope")]),
                &tokens
            ),
            None
        );
        assert!(!same("s3 cr&t=-", token) && !same("", token));
    }

    #[test]
    fn a_viewer_may_not_do_what_needs_an_operator() {
        let viewer = Caller {
            name: "wall".into(),
            role: Role::Viewer,
        };
        let operator = Caller {
            name: "ops".into(),
            role: Role::Operator,
        };
        assert!(operator.refused(Role::Operator, "silencing").is_none());
        assert!(viewer.refused(Role::Viewer, "reading").is_none());
        let refused = viewer.refused(Role::Operator, "silencing").unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            Caller::anonymous()
                .refused(Role::Operator, "silencing")
                .unwrap()
                .status(),
            StatusCode::FORBIDDEN,
            "no token configured: nobody writes"
        );
    }

    #[test]
    fn only_loopback_hosts_and_the_allowed_ones_pass_the_host_check() {
        for ok in [
            "localhost",
            "localhost:8050",
            "127.0.0.1:8050",
            "127.3.2.1",
            "[::1]:8050",
            "LOCALHOST",
        ] {
            assert!(host_allowed(ok, &[]), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8050",
            "localhost.evil.example",
            "10.0.0.1:8050",
            "[::2]:80",
        ] {
            assert!(!host_allowed(bad, &[]), "{bad}");
        }
        assert!(host_allowed(
            "dash.example.com",
            &["dash.example.com".to_string()]
        ));
        assert!(host_allowed(
            "dash.example.com:443",
            &["dash.example.com".to_string()]
        ));
    }

    #[test]
    fn the_redirect_keeps_the_other_parameters_and_drops_the_token() {
        assert_eq!(without_token("token=abc"), "/");
        assert_eq!(
            without_token("range=1h&token=abc&metric=top_items"),
            "/?range=1h&metric=top_items"
        );
    }
}
