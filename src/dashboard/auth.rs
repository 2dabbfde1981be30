//! The dashboard token and the host check. With `[dashboard] token` set, every route needs it,
//! from an `Authorization: Bearer` header or the cookie set on the first authorised load of the
//! page, which alone also takes a `?token=` query parameter (URL-decoded). Comparisons take the same time whatever the guess, and the
//! token is never written into a page: an authorised `GET /?token=...` gets the cookie and a
//! redirect to the same page without the token in its address.

use super::Shared;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

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
    let token = state.token();
    if token.is_empty() {
        // A reload that removed the token does not open a dashboard bound beyond loopback.
        if !state.loopback && !state.config.borrow().allow_anonymous {
            return (StatusCode::UNAUTHORIZED, "this dashboard listens beyond loopback and its token was removed: set dashboard.token again").into_response();
        }
        return next.run(req).await;
    }
    let page_load = req.method() == Method::GET && req.uri().path() == "/";
    // `?token=` opens the page once (it sets the cookie and redirects the token out of the
    // address); elsewhere a token in a URL would land in proxy and server logs.
    let Some(from) = authorised(&req, &token).filter(|from| *from != From::Query || page_load)
    else {
        return (StatusCode::UNAUTHORIZED, "a dashboard token is required (Authorization: Bearer <token>, or open the page once with ?token= to set a cookie)")
            .into_response();
    };
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
            serde_urlencoded::to_string([(COOKIE, token.as_str())]).unwrap_or_default()
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

/// Which of the request's credentials holds the token, if any.
fn authorised(req: &Request, token: &str) -> Option<From> {
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_some_and(|b| same(b, token)) {
        return Some(From::Header);
    }
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    if query.iter().any(|(k, v)| k == "token" && same(v, token)) {
        return Some(From::Query);
    }
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'));
    for c in cookies {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(c.trim()).unwrap_or_default();
        if pairs.iter().any(|(k, v)| k == COOKIE && same(v, token)) {
            return Some(From::Cookie);
        }
    }
    None
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
        assert_eq!(
            authorised(
                &request("/", &[("Authorization", "Bearer s3 cr&t=+")]),
                token
            ),
            Some(From::Header)
        );
        assert_eq!(
            authorised(
                &request("/api/health?range=5m&token=s3%20cr%26t%3D%2B", &[]),
                token
            ),
            Some(From::Query)
        );
        assert_eq!(
            authorised(
                &request("/", &[("Cookie", "a=b; runner_token=s3+cr%26t%3D%2B")]),
                token
            ),
            Some(From::Cookie)
        );
        assert_eq!(
            authorised(
                &request("/?token=s3%20cr", &[("Authorization", "Bearer nope")]),
                token
            ),
            None
        );
        assert!(!same("s3 cr&t=-", token) && !same("", token));
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
