//! `/api/silences`: list (`GET`), make (`POST`, operator) and expire (`DELETE /api/silences/{id}`,
//! operator) silences, kept in the store so every replica's evaluator and a restart see them.
//! `runner silence` and the dashboard's "silence" button both talk to this.

use super::{Caller, Role, Shared};
use crate::alert::silence::{self, parse_matcher, SilenceState};
use crate::store::{Matcher, Silence};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The most matchers one silence may have, and the longest comment (they are stored and shown).
const MAX_MATCHERS: usize = 64;
const MAX_COMMENT: usize = 2000;

/// A matcher as a request gives it: `"severity=~page|critical"`, or Alertmanager's object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MatcherIn {
    Text(String),
    Object(Matcher),
}

/// `POST /api/silences`: Alertmanager's silence fields (camelCase also taken), or a
/// `duration` from now instead of `ends_at`. Who made it is the token's name, not a field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    matchers: Vec<MatcherIn>,
    #[serde(default, alias = "startsAt")]
    starts_at: Option<DateTime<Utc>>,
    #[serde(default, alias = "endsAt")]
    ends_at: Option<DateTime<Utc>>,
    /// `1h`, `30m`: the silence ends this long after it starts.
    #[serde(default)]
    duration: Option<String>,
    comment: String,
    /// Accepted for Alertmanager clients and ignored: the token's name is recorded.
    #[serde(default, alias = "createdBy")]
    #[allow(dead_code)]
    created_by: Option<String>,
}

/// A silence as listed: the stored one and where it is in its life.
#[derive(Debug, Serialize)]
struct Listed {
    #[serde(flatten)]
    silence: Silence,
    state: SilenceState,
}

fn bad(status: StatusCode, why: impl std::fmt::Display) -> Response {
    (status, format!("{why}\n")).into_response()
}

pub(super) async fn list(State(state): State<Shared>) -> Response {
    let now = Utc::now();
    match state
        .sources
        .store
        .silences((now - silence::KEEP_EXPIRED).timestamp_millis())
        .await
    {
        Ok(all) => Json(
            all.into_iter()
                .rev()
                .map(|s| Listed {
                    state: silence::state(&s, now),
                    silence: s,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => bad(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the silences: {e:#}"),
        ),
    }
}

/// The silence a request describes, made by `by` at `now`, or why not.
fn silence_of(req: NewSilence, by: &str, now: DateTime<Utc>) -> Result<Silence, String> {
    if req.matchers.len() > MAX_MATCHERS {
        return Err(format!("at most {MAX_MATCHERS} matchers"));
    }
    if req.comment.chars().count() > MAX_COMMENT {
        return Err(format!(
            "the comment is longer than {MAX_COMMENT} characters"
        ));
    }
    let matchers = req
        .matchers
        .into_iter()
        .map(|m| match m {
            MatcherIn::Text(t) => parse_matcher(&t),
            MatcherIn::Object(m) => Ok(m),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let starts_at = req.starts_at.unwrap_or(now).max(now);
    let ends_at = match (req.ends_at, req.duration) {
        (Some(_), Some(_)) => return Err("give ends_at or duration, not both".into()),
        (Some(end), None) => end,
        (None, Some(d)) => {
            let d = humantime::parse_duration(&d)
                .map_err(|e| format!("duration {d:?}: {e} (write 1h, 30m, 2h30m)"))?;
            starts_at + chrono::Duration::from_std(d).map_err(|e| format!("duration: {e}"))?
        }
        (None, None) => return Err("give ends_at or a duration (\"1h\")".into()),
    };
    let s = Silence {
        id: uuid::Uuid::new_v4().to_string(),
        matchers,
        starts_at,
        ends_at,
        created_by: by.to_string(),
        comment: req.comment.trim().to_string(),
        updated_at: now,
        expired_by: None,
    };
    silence::check(&s)?;
    Ok(s)
}

pub(super) async fn create(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewSilence>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(refused) = caller.refused(Role::Operator, "making a silence") {
        return refused;
    }
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("the silence: {}", e.body_text()),
            )
        }
    };
    let s = match silence_of(req, &caller.name, Utc::now()) {
        Ok(s) => s,
        Err(e) => return bad(StatusCode::BAD_REQUEST, format!("the silence: {e}")),
    };
    match state.sources.store.save_silence(&s).await {
        Ok(()) => {
            tracing::info!(id = %s.id, by = %s.created_by, matchers = %shown(&s.matchers), ends_at = %s.ends_at, comment = %s.comment, "silence made");
            (StatusCode::CREATED, Json(s)).into_response()
        }
        Err(e) => bad(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot store the silence: {e:#}"),
        ),
    }
}

pub(super) async fn expire(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = caller.refused(Role::Operator, "expiring a silence") {
        return refused;
    }
    let now = Utc::now();
    let all = match state.sources.store.silences(now.timestamp_millis()).await {
        Ok(all) => all,
        Err(e) => {
            return bad(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the silences: {e:#}"),
            )
        }
    };
    let Some(mut s) = all.into_iter().find(|s| s.id == id) else {
        return bad(
            StatusCode::NOT_FOUND,
            format!("no silence {id:?} that has not ended (GET /api/silences lists them)"),
        );
    };
    // A pending silence ends before it starts, as Alertmanager expires it.
    s.starts_at = s.starts_at.min(now);
    s.ends_at = now;
    s.updated_at = now;
    s.expired_by = Some(caller.name.clone());
    match state.sources.store.save_silence(&s).await {
        Ok(()) => {
            tracing::info!(id = %s.id, by = %caller.name, "silence expired");
            Json(s).into_response()
        }
        Err(e) => bad(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot store the silence: {e:#}"),
        ),
    }
}

fn shown(matchers: &[Matcher]) -> String {
    matchers
        .iter()
        .map(silence::show)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> NewSilence {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_silence_request_takes_text_or_alertmanager_matchers_and_a_duration_or_an_end() {
        let now = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .to_utc();
        let s = silence_of(
            request(r#"{"matchers": ["alertname=traffic_drop", {"name": "severity", "value": "page|critical", "isRegex": true}], "duration": "1h", "comment": "planned outage", "createdBy": "someone else"}"#),
            "ops",
            now,
        )
        .unwrap();
        assert_eq!(s.matchers.len(), 2);
        assert!(s.matchers[1].is_regex && s.matchers[1].is_equal);
        assert_eq!(s.ends_at - s.starts_at, chrono::Duration::hours(1));
        assert_eq!(s.created_by, "ops", "the token's name, not the body's");
        let s = silence_of(
            request(r#"{"matchers": ["alertname=a"], "endsAt": "2026-12-07T12:00:00Z", "comment": "c"}"#),
            "ops",
            now,
        )
        .unwrap();
        assert_eq!(s.ends_at.to_rfc3339(), "2026-12-07T12:00:00+00:00");
        for bad in [
            r#"{"matchers": ["alertname=a"], "comment": "no end"}"#,
            r#"{"matchers": ["alertname=a"], "duration": "soon", "comment": "c"}"#,
            r#"{"matchers": ["alertname=~.*"], "duration": "1h", "comment": "everything"}"#,
            r#"{"matchers": ["alertname=a"], "duration": "1h", "comment": ""}"#,
            r#"{"matchers": ["alertname=a"], "endsAt": "2026-12-07T09:00:00Z", "comment": "ended"}"#,
        ] {
            assert!(silence_of(request(bad), "ops", now).is_err(), "{bad}");
        }
    }
}
