//! Output records (JSON on the wire; Avro schemas of the same shape live in `schemas/`).

use serde::Serialize;

use crate::event::Channel;
use crate::time::Millis;

/// Per-rule numbers, one field per rule, plus the model-based `deep` credit (null until models run).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize, Default)]
pub struct RuleColumns {
    pub time_decay: f64,
    pub last_touch: f64,
    pub first_touch: f64,
    pub linear: f64,
    pub position_based: f64,
    pub deep: Option<f64>,
}

impl RuleColumns {
    pub fn from_array(v: [f64; 5]) -> Self {
        RuleColumns { time_decay: v[0], last_touch: v[1], first_touch: v[2], linear: v[3], position_based: v[4], deep: None }
    }
    pub fn to_array(&self) -> [f64; 5] {
        [self.time_decay, self.last_touch, self.first_touch, self.linear, self.position_based]
    }
}

/// One touchpoint of a converting journey with its credits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreditedTouchpoint {
    /// Null for the synthetic `direct` touchpoint of a conversion without touchpoints.
    pub event_id: Option<String>,
    pub channel: Channel,
    pub campaign: Option<String>,
    pub ts: Millis,
    /// `none` for the synthetic `direct` touchpoint.
    pub event_type: &'static str,
    pub time_decay: f64,
    pub last_touch: f64,
    pub first_touch: f64,
    pub linear: f64,
    pub position_based: f64,
    pub deep: Option<f64>,
}

impl CreditedTouchpoint {
    /// The synthetic `direct` touchpoint of a conversion without touchpoints: every credit 1.
    pub fn direct(ts: Millis, deep: Option<f64>) -> Self {
        CreditedTouchpoint {
            event_id: None,
            channel: Channel::Direct,
            campaign: None,
            ts,
            event_type: "none",
            time_decay: 1.0,
            last_touch: 1.0,
            first_touch: 1.0,
            linear: 1.0,
            position_based: 1.0,
            deep,
        }
    }
}

/// `touchstream.attribution.conversions`, key = customer id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversionRecord {
    pub conversion_id: String,
    pub customer_id: String,
    pub conversion_ts: Millis,
    pub conversion_value: f64,
    pub currency: Option<String>,
    pub touchpoints: Vec<CreditedTouchpoint>,
    /// How `deep` was computed: `removal_effect`, `shapley`, or `time_decay_fallback` (the model
    /// saw no lift, or no touchpoint lies before the purchase path); null without models.
    pub deep_method: Option<&'static str>,
    /// The share of the conversion that deep credit leaves to the customer's own baseline (what
    /// the journey without any touchpoint explains): the touchpoints' `deep` sum to 1 minus this.
    /// Null without models, on a fallback, or for a model without a baseline share.
    pub deep_baseline: Option<f64>,
    /// The attribution model's P(conversion) of the journey.
    pub conversion_probability: Option<f64>,
    /// The step model's expected value of the customer's next 90 days, after this purchase.
    pub expected_future_value: Option<f64>,
    /// Version of the models that touched this record.
    pub model_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CartItem {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopTouchpoint {
    pub channel: Channel,
    pub campaign: Option<String>,
    pub time_decay_credit: f64,
    /// Deep credit of the journey so far (null without models).
    pub deep_credit: Option<f64>,
}

/// What made P(abandon) high: a group of the step model's inputs, the customer's value of it, and
/// how much P(abandon) falls when the group is set to a typical cart's (see `alerts::reasons`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbandonmentReason {
    pub feature: &'static str,
    pub value: String,
    pub impact: f64,
}

/// `touchstream.alerts.cart-abandonment`, key = customer id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRecord {
    pub alert_id: String,
    pub customer_id: String,
    pub alert_ts: Millis,
    pub cart_value: f64,
    pub currency: Option<String>,
    pub items: Vec<CartItem>,
    pub last_activity_ts: Millis,
    /// `model` (P(abandon) cleared the alert policy's threshold at an inactivity check),
    /// `safety_net` (with models: the model did not alert by `alerts.safety_net`) or
    /// `inactivity_timeout` (without models: idle for `alerts.target_delay`).
    pub reason: &'static str,
    pub abandonment_probability: Option<f64>,
    /// P(purchase within 7 days) from the step model.
    pub conversion_probability: Option<f64>,
    pub top_touchpoints: Vec<TopTouchpoint>,
    /// Up to 3 inputs that raised P(abandon) most (empty without models or without a reference).
    pub abandonment_reasons: Vec<AbandonmentReason>,
    pub recommended_action: String,
    /// Cart value x P(abandon) x `alerts.recovery_rate`: what a message may win back (null
    /// without a probability).
    pub expected_recoverable_value: Option<f64>,
    pub model_version: Option<String>,
}

/// `touchstream.scores` (compacted), key = customer id: the customer's current model scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreRecord {
    pub customer_id: String,
    /// Event time of the customer's latest scored event.
    pub ts: Millis,
    pub purchase_probability: f64,
    /// P(the open cart is abandoned); meaningful while a cart is open.
    pub abandonment_probability: f64,
    pub cart_open: bool,
    pub expected_value: f64,
    pub model_version: String,
}

/// Per-window, per-channel numbers: touchpoints seen and conversions/revenue credited by each rule.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, serde::Deserialize)]
pub struct WindowNumbers {
    pub touchpoints: u64,
    pub conversions: [f64; 5],
    pub revenue: [f64; 5],
    /// Deep credit (models only): conversions, revenue and expected future value credited.
    #[serde(default)]
    pub deep: Option<[f64; 3]>,
}

impl WindowNumbers {
    pub fn add(&mut self, other: &WindowNumbers) {
        self.touchpoints += other.touchpoints;
        for i in 0..5 {
            self.conversions[i] += other.conversions[i];
            self.revenue[i] += other.revenue[i];
        }
        if let Some(d) = other.deep {
            let mine = self.deep.get_or_insert([0.0; 3]);
            for i in 0..3 {
                mine[i] += d[i];
            }
        }
    }
}

/// `touchstream.attribution.channels`, key = `<window_start>|<channel>`; also the value of the
/// internal partials topic, where `source_partition` names the input partition it sums.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ChannelWindowRecord {
    pub window_start: Millis,
    pub window_end: Millis,
    pub channel: String,
    pub touchpoints: u64,
    pub credited_conversions: RuleColumns,
    pub credited_revenue: RuleColumns,
    /// Expected future value (step model) of the converting customers, by deep credit.
    #[serde(default)]
    pub credited_expected_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_partition: Option<i32>,
}

impl ChannelWindowRecord {
    pub fn new(window_start: Millis, width: Millis, channel: Channel, n: &WindowNumbers, source_partition: Option<i32>) -> Self {
        ChannelWindowRecord {
            window_start,
            window_end: window_start + width,
            channel: channel.as_str().to_string(),
            touchpoints: n.touchpoints,
            credited_conversions: RuleColumns { deep: n.deep.map(|d| d[0]), ..RuleColumns::from_array(n.conversions) },
            credited_revenue: RuleColumns { deep: n.deep.map(|d| d[1]), ..RuleColumns::from_array(n.revenue) },
            credited_expected_value: n.deep.map(|d| d[2]),
            source_partition,
        }
    }
    pub fn numbers(&self) -> WindowNumbers {
        WindowNumbers {
            touchpoints: self.touchpoints,
            conversions: self.credited_conversions.to_array(),
            revenue: self.credited_revenue.to_array(),
            deep: self.credited_conversions.deep.map(|c| [c, self.credited_revenue.deep.unwrap_or(0.0), self.credited_expected_value.unwrap_or(0.0)]),
        }
    }
}

#[cfg(test)]
mod schema_tests {
    //! Every output record conforms to its Avro schema in `schemas/` (the source of truth).
    use apache_avro::Schema;

    use super::*;
    use crate::engine::{EngineConfig, Output, PartitionEngine};
    use crate::event::{decode, Validation};

    fn schema(text: &str) -> Schema {
        Schema::parse_str(text).expect("schema parses")
    }

    #[track_caller]
    fn conforms<T: Serialize>(record: &T, schema: &Schema) {
        let value = apache_avro::to_value(record).expect("to avro value");
        // the record has exactly the schema's fields (resolution alone ignores extra ones)
        if let (apache_avro::types::Value::Record(fields), Schema::Record(rs)) = (&value, schema) {
            let got: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
            let want: Vec<&str> = rs.fields.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(got, want, "fields of {}", serde_json::to_string(record).unwrap());
        }
        let resolved = value.clone().resolve(schema);
        assert!(resolved.is_ok(), "{:?}\nfor {}", resolved.err(), serde_json::to_string(record).unwrap());
    }

    #[test]
    fn outputs_conform_to_their_avro_schemas() {
        outputs_conform(false);
    }

    #[test]
    fn outputs_with_models_conform_to_their_avro_schemas() {
        outputs_conform(true);
    }

    fn outputs_conform(models: bool) {
        let conversion = schema(include_str!("../../schemas/attribution_conversion.avsc"));
        let alert = schema(include_str!("../../schemas/cart_abandonment_alert.avsc"));
        let channels = schema(include_str!("../../schemas/attribution_channel_window.avsc"));
        let scores = schema(include_str!("../../schemas/customer_score.avsc"));
        // a threshold every check clears: the model alerts at its first check
        let cfg = EngineConfig { target_delay: 30 * 60_000, abandon_threshold: Some(0.0), ..EngineConfig::default() }
            .with_models(models.then(crate::inference::test_models));
        let mut engine = PartitionEngine::new(0, cfg);
        let mut out = Vec::new();
        let check = Validation { now: i64::MAX / 2, max_future_skew_ms: 0 };
        let events = [
            r#"{"event_id":"1","customer_id":"c","ts":1000,"event_type":"click","channel":"email","campaign":"x"}"#,
            r#"{"event_id":"2","customer_id":"c","ts":2000,"event_type":"cart_add","product_id":"p","value":3.5,"currency":"EUR"}"#,
            r#"{"event_id":"3","customer_id":"d","ts":9000000,"event_type":"purchase","value":3.5}"#,
            r#"{"event_id":"4","customer_id":"c","ts":9000001,"event_type":"purchase","value":7}"#,
        ];
        for e in events {
            let key = if e.contains("\"c\"") { "c" } else { "d" };
            engine.process(&decode(Some(key.as_bytes()), e.as_bytes(), &check).unwrap(), &mut out);
        }
        engine.settle(&mut out);
        let (mut conversions, mut alerts) = (0, 0);
        for o in &out {
            match o {
                Output::Conversion(c) => {
                    conversions += 1;
                    conforms(c, &conversion)
                }
                Output::Alert(a) => {
                    alerts += 1;
                    conforms(a, &alert)
                }
            }
        }
        assert_eq!((conversions, alerts), (2, 1));
        let mut windows = Vec::new();
        engine.drain_changed_windows(&mut windows);
        assert!(!windows.is_empty());
        for mut w in windows {
            assert_eq!(w.credited_conversions.deep.is_some(), models);
            assert_eq!(w.credited_expected_value.is_some(), models && w.credited_conversions.deep.is_some());
            w.source_partition = None; // totals on the channels topic carry no source partition
            conforms(&w, &channels);
        }
        let mut records = Vec::new();
        engine.drain_scores(&mut records);
        assert_eq!(records.len(), if models { 2 } else { 0 });
        for r in &records {
            conforms(r, &scores);
        }
    }

    #[test]
    fn the_input_schema_parses_and_admits_a_contract_event() {
        let input = schema(include_str!("../../schemas/journey_event.avsc"));
        let record = apache_avro::types::Value::Record(vec![
            ("event_id".into(), "e1".into()),
            ("customer_id".into(), "c1".into()),
            ("ts".into(), apache_avro::types::Value::TimestampMillis(1)),
            ("event_type".into(), apache_avro::types::Value::Enum(0, "impression".into())),
            ("channel".into(), apache_avro::types::Value::Union(1, Box::new(apache_avro::types::Value::Enum(4, "email".into())))),
            ("campaign".into(), apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null))),
            ("session_id".into(), apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null))),
            ("value".into(), apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null))),
            ("currency".into(), apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null))),
            ("product_id".into(), apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null))),
            ("quantity".into(), apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null))),
            ("properties".into(), apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null))),
        ]);
        assert!(record.validate(&input));
        // the symbols of the schema's enums are exactly the contract's
        let text = include_str!("../../schemas/journey_event.avsc");
        for t in crate::event::EventType::ALL {
            assert!(text.contains(&format!("\"{}\"", t.as_str())), "{t}");
        }
        for c in crate::event::Channel::ALL {
            assert!(text.contains(&format!("\"{}\"", c.as_str())), "{c}");
        }
    }
}
