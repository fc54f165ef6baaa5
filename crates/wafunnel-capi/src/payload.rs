//! The request bodies of the Conversions API for Business Messaging.
//!
//! Contract:
//! - One event per export: `event_name`, `event_time` (Unix seconds, the
//!   source event's millisecond time floored), `action_source`
//!   `business_messaging`, `messaging_channel` `whatsapp`, `event_id` (the
//!   export id, so Meta deduplicates a resend), `user_data` with the
//!   account's WhatsApp Business Account id and the click id, and for a
//!   purchase `custom_data` with its currency and value.
//! - Nothing else about the contact is sent: never a phone number, a user
//!   id or hash, or a message text. The export carries none of them.
//! - [`requests`] groups what is to be sent into requests: only exports
//!   decided `send` of accounts with a dataset, each export id once (the
//!   first), per account in the order of their first export, at most
//!   `max_batch` events per request, exports in their input order.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use wafunnel_core::export::{ConversionExport, ExportDecision};
use wafunnel_core::money::{Currency, MONEY_SCALE};

/// Where one account's events go, without credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The dataset (pixel) id the events are posted to.
    pub dataset_id: String,
    /// The account's WhatsApp Business Account id, sent in `user_data`.
    pub waba_id: String,
}

/// What [`requests`] needs: the Graph API version, the batch size and
/// each account's destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destinations {
    /// `v21.0`.
    pub api_version: String,
    /// Most events per request (Meta accepts at most 1000).
    pub max_batch: usize,
    /// Per ad account id.
    pub accounts: BTreeMap<String, Destination>,
}

impl Destinations {
    /// The URL path events of `dataset_id` are posted to, after the base URL.
    pub fn path(&self, dataset_id: &str) -> String {
        format!("/{}/{dataset_id}/events", self.api_version)
    }
}

/// One event of a request body.
#[derive(Debug, Serialize, PartialEq)]
pub struct Event<'a> {
    /// `LeadSubmitted` or `Purchase`.
    pub event_name: &'static str,
    /// Unix seconds.
    pub event_time: i64,
    /// Always `business_messaging`.
    pub action_source: &'static str,
    /// Always `whatsapp`.
    pub messaging_channel: &'static str,
    /// The export id.
    pub event_id: &'a str,
    /// Who: the business account and the click, nothing about the person.
    pub user_data: UserData<'a>,
    /// A purchase's currency and value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<CustomData>,
}

/// `user_data` of an event.
#[derive(Debug, Serialize, PartialEq)]
pub struct UserData<'a> {
    /// The account's WhatsApp Business Account id.
    pub whatsapp_business_account_id: &'a str,
    /// The click-to-WhatsApp click id of the conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctwa_clid: Option<&'a str>,
}

/// `custom_data` of a purchase.
#[derive(Debug, Serialize, PartialEq)]
pub struct CustomData {
    /// ISO 4217 code.
    pub currency: Currency,
    /// The amount in currency units.
    pub value: f64,
}

/// The event of one export sent on behalf of the account of `waba_id`.
pub fn event<'a>(export: &'a ConversionExport, waba_id: &'a str) -> Event<'a> {
    Event {
        event_name: export.event_name.as_str(),
        event_time: export.event_time.div_euclid(1000),
        action_source: "business_messaging",
        messaging_channel: "whatsapp",
        event_id: &export.export_id,
        user_data: UserData {
            whatsapp_business_account_id: waba_id,
            ctwa_clid: export.click_id.as_deref(),
        },
        custom_data: export.value.map(|value| CustomData {
            // The engine gives every purchase its account's currency; USD
            // is the account default if an export ever lacks it.
            currency: export.currency.unwrap_or(Currency::USD),
            // Exact to 1/10000: the shortest decimal of this double is the amount.
            value: value.0 as f64 / MONEY_SCALE as f64,
        }),
    }
}

/// The JSON body of one request: `{"data":[...]}`.
pub fn body(exports: &[&ConversionExport], waba_id: &str) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        data: Vec<Event<'a>>,
    }
    let body = Body {
        data: exports.iter().map(|e| event(e, waba_id)).collect(),
    };
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}

/// One request to make: an account's batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The ad account.
    pub account_id: String,
    /// The dataset posted to.
    pub dataset_id: String,
    /// The URL path after the base URL: `/{api_version}/{dataset_id}/events`.
    pub path: String,
    /// The export ids of its events, in the body's order.
    pub export_ids: Vec<String>,
    /// The JSON body.
    pub body: String,
}

impl Request {
    /// The line a dry run writes: `{"path":...,"body":{...}}`.
    pub fn dry_run_line(&self) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            path: &'a str,
            body: &'a serde_json::value::RawValue,
        }
        match serde_json::value::RawValue::from_string(self.body.clone()) {
            Ok(raw) => serde_json::to_string(&Line {
                path: &self.path,
                body: &raw,
            })
            .unwrap_or_default(),
            // Bodies are built by [`body`]: always JSON.
            Err(_) => String::new(),
        }
    }
}

/// The exports, in input order, grouped per account: those decided `send`
/// of accounts that have a destination, each export id once.
pub fn sendable<'a>(
    exports: impl IntoIterator<Item = &'a ConversionExport>,
    destinations: &Destinations,
) -> Vec<(&'a str, Vec<&'a ConversionExport>)> {
    let mut seen = HashSet::new();
    let mut groups: Vec<(&str, Vec<&ConversionExport>)> = Vec::new();
    for export in exports {
        if export.decision != ExportDecision::Send
            || !destinations.accounts.contains_key(&*export.account_id)
            || !seen.insert(export.export_id.as_str())
        {
            continue;
        }
        match groups.iter_mut().find(|(a, _)| *a == &*export.account_id) {
            Some((_, group)) => group.push(export),
            None => groups.push((&export.account_id, vec![export])),
        }
    }
    groups
}

/// The requests that send `exports` (see the module contract): what
/// `wafunnel capi` posts for them, and what a dry run or an offline replay
/// writes.
pub fn requests(exports: &[ConversionExport], destinations: &Destinations) -> Vec<Request> {
    let mut out = Vec::new();
    for (account, group) in sendable(exports, destinations) {
        let Some(destination) = destinations.accounts.get(account) else {
            continue;
        };
        for chunk in group.chunks(destinations.max_batch.max(1)) {
            out.push(Request {
                account_id: account.to_owned(),
                dataset_id: destination.dataset_id.clone(),
                path: destinations.path(&destination.dataset_id),
                export_ids: chunk.iter().map(|e| e.export_id.clone()).collect(),
                body: body(chunk, &destination.waba_id),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wafunnel_core::export::{export_id, ConversionName};
    use wafunnel_core::money::Money;
    use wafunnel_core::time::Day;

    use super::*;

    fn export(account: &str, source: &str, name: ConversionName) -> ConversionExport {
        ConversionExport {
            export_id: export_id(account, source),
            account_id: Arc::from(account),
            event_name: name,
            event_time: 1_772_560_800_999,
            day: Day(20_515),
            click_id: Some(Arc::from("ARAkxDfRtZ9")),
            value: (name == ConversionName::Purchase).then_some(Money(499_000)),
            currency: (name == ConversionName::Purchase).then_some(Currency::USD),
            decision: ExportDecision::Send,
        }
    }

    fn destinations(max_batch: usize) -> Destinations {
        Destinations {
            api_version: "v21.0".into(),
            max_batch,
            accounts: BTreeMap::from([
                (
                    "act_1001".to_owned(),
                    Destination {
                        dataset_id: "1234567890".into(),
                        waba_id: "104996999999999".into(),
                    },
                ),
                (
                    "act_2002".to_owned(),
                    Destination {
                        dataset_id: "2222".into(),
                        waba_id: "2020".into(),
                    },
                ),
            ]),
        }
    }

    fn golden(name: &str) -> String {
        let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim_end()
            .to_owned()
    }

    #[test]
    fn a_lead_is_exactly_the_golden_body() {
        let lead = export("act_1001", "lead-1", ConversionName::LeadSubmitted);
        let requests = requests(&[lead], &destinations(1000));
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].path, "/v21.0/1234567890/events");
        assert_eq!(requests[0].body, golden("lead_submitted.json"));
    }

    #[test]
    fn a_purchase_is_exactly_the_golden_body() {
        let purchase = export("act_1001", "purchase-1", ConversionName::Purchase);
        let requests = requests(&[purchase], &destinations(1000));
        assert_eq!(requests[0].body, golden("purchase.json"));
        assert_eq!(
            requests[0].dry_run_line(),
            golden("purchase.dry_run.ndjson")
        );
    }

    #[test]
    fn values_keep_their_decimals() {
        let mut purchase = export("act_1001", "p", ConversionName::Purchase);
        for (money, text) in [
            (Money(1), "0.0001"),
            (Money(1_200_000), "120.0"),
            (Money(123_456_789_012_345_678), "12345678901234.568"),
        ] {
            purchase.value = Some(money);
            let body = body(&[&purchase], "w");
            assert!(body.contains(&format!("\"value\":{text}}}")), "{body}");
        }
    }

    #[test]
    fn only_sendable_exports_of_configured_accounts_are_batched_once() {
        let mut all = Vec::new();
        for i in 0..5 {
            all.push(export(
                "act_1001",
                &format!("l{i}"),
                ConversionName::Purchase,
            ));
        }
        all.push(export("act_2002", "x", ConversionName::LeadSubmitted));
        all.push(all[0].clone());
        all.push(export("act_9999", "unconfigured", ConversionName::Purchase));
        let mut outside = export("act_1001", "late", ConversionName::Purchase);
        outside.decision = ExportDecision::OutsideWindow;
        all.push(outside);
        let mut no_click = export("act_1001", "organic", ConversionName::Purchase);
        no_click.decision = ExportDecision::NoClickId;
        no_click.click_id = None;
        all.push(no_click);

        let requests = requests(&all, &destinations(2));
        let shape: Vec<(&str, usize)> = requests
            .iter()
            .map(|r| (r.account_id.as_str(), r.export_ids.len()))
            .collect();
        assert_eq!(
            shape,
            [
                ("act_1001", 2),
                ("act_1001", 2),
                ("act_1001", 1),
                ("act_2002", 1)
            ]
        );
        let sent: Vec<&String> = requests.iter().flat_map(|r| &r.export_ids).collect();
        let expected: Vec<String> = all[..6].iter().map(|e| e.export_id.clone()).collect();
        assert_eq!(sent, expected.iter().collect::<Vec<_>>());
        assert_eq!(requests[3].path, "/v21.0/2222/events");
    }

    #[test]
    fn nothing_about_the_person_is_sent() {
        let purchase = export("act_1001", "p", ConversionName::Purchase);
        let value: serde_json::Value =
            serde_json::from_str(&body(&[&purchase], "w")).expect("json");
        let user_data = value["data"][0]["user_data"]
            .as_object()
            .expect("user_data");
        let keys: Vec<&String> = user_data.keys().collect();
        assert_eq!(keys, ["ctwa_clid", "whatsapp_business_account_id"]);
    }
}
