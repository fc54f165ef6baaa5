//! The generated traffic as Meta sends it: `message_in` and `message_out`
//! as WhatsApp Cloud API webhook bodies, `ad_spend` as Marketing API
//! insights rows (docs/SEMANTICS.md section 6), the rest as canonical JSON.
//!
//! Each payload is rendered from the canonical line of the same event, so
//! that normalizing it gives back that very event: this holds for the
//! events of a [`GenConfig::meta`] configuration, which only holds what the
//! payloads can express (see the crate docs).

use std::collections::HashMap;

use serde_json::{json, Map, Value};
use wafunnel_core::event::{decode_json, RawEvent, RawTime};
use wafunnel_core::time::{format_rfc3339_ms, parse_rfc3339_ms};

use crate::model::mix64;
use crate::{GenConfig, GenRecord, GenStream, RecordKind};

/// How a rendered record is encoded: the `format` of the raw topic it
/// belongs on (and of `wafunnel replay --input FORMAT=FILE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// One canonical JSON event.
    Json,
    /// One WhatsApp Cloud API webhook body.
    WhatsappWebhook,
    /// One Marketing API insights row, with `fetched_at`.
    MetaInsights,
}

impl PayloadFormat {
    /// The format's name in the configuration: `json`, `whatsapp-webhook`
    /// or `meta-insights`.
    pub fn name(self) -> &'static str {
        match self {
            PayloadFormat::Json => "json",
            PayloadFormat::WhatsappWebhook => "whatsapp-webhook",
            PayloadFormat::MetaInsights => "meta-insights",
        }
    }
}

/// One record of the Meta rendering, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaRecord {
    /// How `payload` is encoded.
    pub format: PayloadFormat,
    /// The bytes, without a newline.
    pub payload: Vec<u8>,
    /// What it is: a body batching two events is an original; a duplicate
    /// is the same event again (a byte-identical body unless its first
    /// delivery was batched, then a body of its own).
    pub kind: RecordKind,
    /// When it arrives (epoch ms): for a batched body, its last event's.
    pub arrival_ms: i64,
    /// The account id.
    pub account_id: String,
    /// The canonical records it stands for, in payload order: one, or two
    /// for a batched body.
    pub canonical: Vec<GenRecord>,
}

/// The records of a [`GenConfig::meta`] configuration rendered as Meta
/// sends them; see [`meta_stream`].
#[derive(Debug)]
pub struct MetaStream {
    inner: GenStream,
    /// A record read ahead while looking for a batch partner.
    held: Option<GenRecord>,
    /// `account_id` → `(phone_number_id, waba_id)`.
    numbers: HashMap<String, (String, String)>,
}

/// The records of `cfg` as Meta sends them, in arrival order and in
/// bounded memory: `message_in` and `message_out` as webhook bodies (two
/// adjacent originals of one account share a body), `ad_spend` as insights
/// rows, clicks, leads, purchases and invalid lines as canonical JSON.
/// Normalizing each payload gives the events of the canonical lines in
/// [`MetaRecord::canonical`], which, concatenated, are [`crate::stream`]'s.
///
/// # Panics
/// If the configuration is invalid or not in Meta mode.
pub fn meta_stream(cfg: &GenConfig) -> MetaStream {
    assert!(
        cfg.meta,
        "meta_stream needs GenConfig::meta: other events cannot all be expressed"
    );
    let inner = GenStream::new(cfg);
    let numbers = cfg
        .accounts
        .iter()
        .map(|a| {
            let waba = digits15(&a.phone_number_id, 0xba);
            (a.account_id.clone(), (a.phone_number_id.clone(), waba))
        })
        .collect();
    MetaStream {
        inner,
        held: None,
        numbers,
    }
}

/// 15 digits derived from `text`, like Meta's ids.
fn digits15(text: &str, salt: u64) -> String {
    // FNV-1a: stable across platforms and versions, unlike `Hash`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (100_000_000_000_000 + mix64(h) % 900_000_000_000_000).to_string()
}

/// The phone number id [`crate::GenAccount::new`] gives an account.
pub(crate) fn derived_phone_number_id(account_id: &str) -> String {
    digits15(account_id, 0)
}

/// What Meta mode needs beyond [`GenConfig::validate`]'s other checks.
pub(crate) fn validate(cfg: &GenConfig) -> Result<(), String> {
    if cfg.start_ms % 1000 != 0 {
        return Err("in Meta mode start_ms must be a whole second".into());
    }
    let mut seen = HashMap::new();
    for a in &cfg.accounts {
        if !a.account_id.starts_with("act_") {
            return Err(format!(
                "account {}: in Meta mode account ids begin with act_ (insights rows drop it)",
                a.account_id
            ));
        }
        let number = &a.phone_number_id;
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "account {}: phone_number_id `{number}` must be digits",
                a.account_id
            ));
        }
        if let Some(other) = seen.insert(number.clone(), &a.account_id) {
            return Err(format!(
                "accounts {other} and {} share phone_number_id {number}",
                a.account_id
            ));
        }
    }
    Ok(())
}

/// The decoded canonical line of a generated record.
fn decoded(record: &GenRecord) -> RawEvent<'_> {
    decode_json(&record.line).expect("generated valid lines decode")
}

fn event_type(record: &GenRecord) -> Option<String> {
    if matches!(record.kind, RecordKind::Invalid { .. }) {
        return None;
    }
    decoded(record).event_type.map(|t| t.into_owned())
}

fn is_message(event_type: Option<&str>) -> bool {
    matches!(event_type, Some("message_in" | "message_out"))
}

fn time_ms(raw: &RawEvent<'_>) -> i64 {
    match &raw.event_time {
        Some(RawTime::Millis(ms)) => *ms,
        Some(RawTime::Text(text)) => parse_rfc3339_ms(text).expect("generated times parse"),
        None => unreachable!("generated events have a time"),
    }
}

fn text<'a>(v: &'a Option<std::borrow::Cow<'_, str>>) -> &'a str {
    v.as_deref().expect("generated events have this field")
}

/// A webhook `timestamp`: Unix seconds as a string.
fn timestamp(raw: &RawEvent<'_>) -> String {
    let ms = time_ms(raw);
    assert_eq!(ms % 1000, 0, "Meta mode times are whole seconds");
    (ms / 1000).to_string()
}

const NAMES: [&str; 8] = [
    "Ana", "Bruno", "Carla", "Diego", "Elena", "Fábio", "Gabi", "Hugo",
];
const TEXTS: [&str; 6] = [
    "Oi! Quero saber mais",
    "Qual o preço?",
    "Tem disponível?",
    "ok",
    "Obrigado 🙏",
    "Pode me mandar o link?",
];

fn pick<'a>(items: &[&'a str], key: &str) -> &'a str {
    items[(mix64(
        key.bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b)),
    ) % items.len() as u64) as usize]
}

fn inbound(raw: &RawEvent<'_>) -> Value {
    let id = text(&raw.event_id);
    let mut message = json!({
        "from": text(&raw.user_id),
        "id": id,
        "timestamp": timestamp(raw),
        "type": "text",
        "text": {"body": pick(&TEXTS, id)},
    });
    if let Some(ad) = &raw.referral_ad_id {
        let mut referral = json!({
            "source_url": format!("https://fb.me/{ad}"),
            "source_id": ad,
            "source_type": "ad",
            "headline": "Fale com a gente no WhatsApp",
            "body": "Ofertas da semana",
            "media_type": "image",
            "image_url": format!("https://scontent.example/{ad}.jpg"),
        });
        if let Some(clid) = &raw.click_id {
            referral["ctwa_clid"] = json!(clid);
        }
        message["referral"] = referral;
    }
    message
}

fn status(raw: &RawEvent<'_>) -> Value {
    let mut status = json!({
        "id": text(&raw.event_id),
        "status": "sent",
        "timestamp": timestamp(raw),
        "recipient_id": text(&raw.user_id),
    });
    let template = raw.template.unwrap_or(false);
    // Without a pricing block the normalizer gives `template` false and no
    // `billable`: the block is written exactly when either says otherwise.
    if template || raw.billable.is_some() {
        let mut pricing = Map::new();
        if let Some(billable) = raw.billable {
            pricing.insert("billable".into(), billable.into());
        }
        pricing.insert("pricing_model".into(), "PMP".into());
        let category = if template { "marketing" } else { "service" };
        pricing.insert("category".into(), category.into());
        status["pricing"] = Value::Object(pricing);
    }
    status
}

impl MetaStream {
    /// A webhook body of consecutive messages and statuses of one account,
    /// in their order: one change per run of the same kind.
    fn webhook_body(&self, records: &[GenRecord]) -> Vec<u8> {
        let account = &records[0].account_id;
        let (number, waba) = &self.numbers[account];
        let metadata = json!({
            "display_phone_number": format!("1555{}", &number[number.len().saturating_sub(7)..]),
            "phone_number_id": number,
        });
        let mut changes: Vec<Value> = Vec::new();
        let mut last_kind = "";
        for record in records {
            let raw = decoded(record);
            let (kind, list, element) = match text(&raw.event_type) {
                "message_in" => ("message_in", "messages", inbound(&raw)),
                "message_out" => ("message_out", "statuses", status(&raw)),
                other => unreachable!("{other} is not in webhooks"),
            };
            if kind != last_kind {
                let mut value =
                    json!({"messaging_product": "whatsapp", "metadata": metadata.clone()});
                value[list] = json!([]);
                changes.push(json!({"field": "messages", "value": value}));
                last_kind = kind;
            }
            let value = &mut changes.last_mut().expect("just pushed")["value"];
            if kind == "message_in" {
                let user = text(&raw.user_id);
                let contacts = value
                    .as_object_mut()
                    .expect("an object")
                    .entry("contacts")
                    .or_insert_with(|| json!([]));
                let contacts = contacts.as_array_mut().expect("a list");
                // One profile per contact, however many of its messages.
                if !contacts.iter().any(|c| c["wa_id"] == user) {
                    contacts.push(json!({"profile": {"name": pick(&NAMES, user)}, "wa_id": user}));
                }
            }
            value[list].as_array_mut().expect("a list").push(element);
        }
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": waba, "changes": changes}],
        });
        serde_json::to_vec(&body).expect("values serialize")
    }

    fn insights_row(record: &GenRecord) -> Vec<u8> {
        let raw = decoded(record);
        let account = text(&raw.account_id);
        let mut actions = Vec::new();
        let clicks = raw.clicks.unwrap_or(0);
        if clicks > 0 {
            actions.push(json!({"action_type": "link_click", "value": clicks.to_string()}));
        }
        // Meta leaves out actions that did not happen.
        let conversations = raw.reported_conversations.unwrap_or(0);
        if conversations > 0 {
            actions.push(json!({
                "action_type": wafunnel_meta::insights::CONVERSATIONS_STARTED,
                "value": conversations.to_string(),
            }));
        }
        let date = text(&raw.date);
        let row = json!({
            "account_id": account.strip_prefix("act_").unwrap_or(account),
            "account_currency": text(&raw.currency),
            "campaign_id": text(&raw.campaign_id),
            "adset_id": text(&raw.adset_id),
            "ad_id": text(&raw.ad_id),
            "date_start": date,
            "date_stop": date,
            "spend": text(&raw.spend),
            "impressions": raw.impressions.unwrap_or(0).to_string(),
            "clicks": clicks.to_string(),
            "actions": actions,
            "fetched_at": format_rfc3339_ms(time_ms(&raw)),
        });
        serde_json::to_vec(&row).expect("values serialize")
    }

    fn render(&self, records: Vec<GenRecord>, event_type: Option<&str>) -> MetaRecord {
        let last = records.last().expect("at least one record");
        let (format, payload) = match event_type {
            _ if is_message(event_type) => {
                (PayloadFormat::WhatsappWebhook, self.webhook_body(&records))
            }
            Some("ad_spend") => (PayloadFormat::MetaInsights, Self::insights_row(last)),
            _ => (PayloadFormat::Json, last.line.clone()),
        };
        MetaRecord {
            format,
            payload,
            kind: records[0].kind,
            arrival_ms: last.arrival_ms,
            account_id: last.account_id.clone(),
            canonical: records,
        }
    }
}

impl Iterator for MetaStream {
    type Item = MetaRecord;

    fn next(&mut self) -> Option<MetaRecord> {
        let first = self.held.take().or_else(|| self.inner.next())?;
        let first_type = event_type(&first);
        let batchable = |record: &GenRecord, event_type: Option<&str>| {
            record.kind == RecordKind::Original && is_message(event_type)
        };
        if !batchable(&first, first_type.as_deref()) {
            return Some(self.render(vec![first], first_type.as_deref()));
        }
        // Meta batches what it sends close together: two originals of one
        // account that arrive one after the other share a body, so the
        // arrival order of the events stays as it was.
        match self.inner.next() {
            Some(second)
                if second.account_id == first.account_id
                    && batchable(&second, event_type(&second).as_deref()) =>
            {
                Some(self.render(vec![first, second], first_type.as_deref()))
            }
            next => {
                self.held = next;
                Some(self.render(vec![first], first_type.as_deref()))
            }
        }
    }
}
