//! The email channel: SMTP through lettre.

use super::Channel;
use crate::alert::config::{EmailConfig, SmtpSecurity};
use crate::alert::notification::Notification;
use anyhow::Context;
use async_trait::async_trait;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;
use std::collections::BTreeMap;

pub(super) struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    subject: String,
    thresholds: BTreeMap<String, Value>,
}

impl EmailChannel {
    pub(super) fn new(
        c: &EmailConfig,
        thresholds: &BTreeMap<String, Value>,
    ) -> anyhow::Result<Self> {
        let from: Mailbox = c
            .from
            .parse()
            .with_context(|| format!("email from {:?} is not an address", c.from))?;
        let to =
            c.to.iter()
                .map(|a| {
                    a.parse::<Mailbox>()
                        .with_context(|| format!("email recipient {a:?} is not an address"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
        minijinja::Environment::new()
            .template_from_str(&c.subject)
            .context("email subject template")?;
        let builder = match c.security {
            SmtpSecurity::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&c.host)?
            }
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&c.host)?,
            SmtpSecurity::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host),
        };
        let mut builder = builder.port(c.port).timeout(Some(c.timeout));
        if !c.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                c.username.clone(),
                c.password.expose().to_string(),
            ));
        }
        Ok(EmailChannel {
            transport: builder.build(),
            from,
            to,
            subject: c.subject.clone(),
            thresholds: thresholds.clone(),
        })
    }
}

#[async_trait]
impl Channel for EmailChannel {
    async fn deliver(&self, n: &Notification) -> anyhow::Result<()> {
        let subject = n
            .render(&self.subject, &self.thresholds)
            .context("email subject template")?;
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = message.body(n.text()).context("cannot build the email")?;
        self.transport
            .send(message)
            .await
            .context("SMTP delivery failed")?;
        Ok(())
    }
}
