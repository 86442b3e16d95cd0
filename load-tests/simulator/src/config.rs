//! The world: every parameter of the generative model, read from TOML.
//!
//! A world file is laid over the built-in default world (`worlds/default.toml`): tables merge key
//! by key, so a file only needs the keys it changes (set `enabled = false` to drop one of the
//! default channels). Unknown keys are errors.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::event::Channel;

/// The built-in default world.
pub const DEFAULT_WORLD: &str = include_str!("../worlds/default.toml");

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    pub seed: u64,
    pub customers: u64,
    pub start_ms: i64,
    pub customer_days: f64,
    pub concurrency: u64,
    pub step_minutes: u32,
    pub currency: String,
    pub id_prefix: String,
    pub diurnal_amplitude: f64,
    pub diurnal_peak_hour: f64,
    pub synergy_days: f64,
    pub baseline: Baseline,
    pub purchase: PurchaseCfg,
    pub browse: BrowseCfg,
    pub session: SessionCfg,
    pub cart: CartCfg,
    pub catalog: CatalogCfg,
    pub truth: TruthCfg,
    pub channels: BTreeMap<String, ChannelCfg>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub rate_per_day: f64,
    pub propensity_sigma: f64,
    pub repeat_factor: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseCfg {
    pub delay_minutes: f64,
    pub refractory_floor: f64,
    pub refractory_recovery_days: f64,
    pub subscribe_prob: f64,
    pub extra_item_prob: f64,
    pub navigation: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrowseCfg {
    pub rate_per_day: f64,
    pub intent_rate: f64,
    pub customer_factor: f64,
    pub signup_prob: f64,
    pub entry: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCfg {
    pub gap_seconds: f64,
    pub continue_prob: f64,
    pub continue_intent_bonus: f64,
    pub intent_half: f64,
    pub product_view_share: f64,
    pub search_share: f64,
    pub cart_add_max: f64,
    pub cart_remove_prob: f64,
    pub checkout_abandon_prob: f64,
    pub max_events: u32,
    pub search_terms: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CartCfg {
    pub boost: f64,
    pub boost_half_life_hours: f64,
    pub value_ref: f64,
    pub engagement_weight: f64,
    pub checkout_boost_factor: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogCfg {
    pub products: u32,
    pub price_median: f64,
    pub price_sigma: f64,
    pub popularity_skew: f64,
    pub quantity_weights: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TruthCfg {
    pub inactivity_minutes: f64,
    pub abandon_hours: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// Impressions, each of which may be clicked.
    Impression,
    /// Clicks only (search ads, affiliate links).
    Click,
    /// Email opens (sends times the open probability), each of which may be clicked.
    Email,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelKind {
    /// `2^(-age / days)`: strongest at once, half gone after `days`.
    Exp,
    /// `(age / days) * e^(1 - age / days)`: none at once, peaks after `days`, long tail.
    Delayed,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Effect {
    /// Added conversion hazard (conversions per day) at the kernel's peak.
    pub size: f64,
    pub kernel: KernelKind,
    pub days: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelCfg {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub kind: ChannelKind,
    #[serde(default)]
    pub rate_per_day: f64,
    #[serde(default)]
    pub prospecting_days: f64,
    #[serde(default = "one")]
    pub late_rate_fraction: f64,
    #[serde(default)]
    pub retarget_rate_per_day: f64,
    #[serde(default)]
    pub retarget_hours: f64,
    #[serde(default)]
    pub intent_rate: f64,
    #[serde(default = "one")]
    pub customer_factor: f64,
    #[serde(default)]
    pub subscriber_only: bool,
    #[serde(default = "one")]
    pub open_prob: f64,
    #[serde(default)]
    pub click_prob: f64,
    #[serde(default)]
    pub intent_substitute: Option<String>,
    #[serde(default)]
    pub navigational_weight: f64,
    #[serde(default)]
    pub checkout_click_prob: f64,
    #[serde(default = "one")]
    pub repeat_factor: f64,
    #[serde(default)]
    pub requires_prior_touch: bool,
    #[serde(default = "one")]
    pub alone_factor: f64,
    #[serde(default)]
    pub reminder_delay_hours: f64,
    #[serde(default)]
    pub reminder_open_prob: f64,
    #[serde(default)]
    pub reminder_click_prob: f64,
    /// Effect per touch type (`impression`, `click`, `email_open`, `email_click`).
    #[serde(default)]
    pub effects: BTreeMap<String, Effect>,
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}

impl World {
    /// The built-in default world.
    pub fn default_world() -> World {
        World::from_toml_str("").expect("the default world is valid")
    }

    /// A world from TOML text laid over the default world.
    pub fn from_toml_str(text: &str) -> Result<World, String> {
        let mut base: toml::Value = toml::from_str(DEFAULT_WORLD).map_err(|e| format!("default world: {e}"))?;
        let over: toml::Value = toml::from_str(text).map_err(|e| format!("world file: {e}"))?;
        touchstream_contract::merge_toml(&mut base, over);
        let world: World = base.try_into().map_err(|e: toml::de::Error| format!("world file: {e}"))?;
        world.validate()?;
        Ok(world)
    }

    pub fn from_file(path: &Path) -> Result<World, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        World::from_toml_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The effective world as TOML (written beside the outputs).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a world serialises")
    }

    pub fn validate(&self) -> Result<(), String> {
        fn prob(name: &str, v: f64) -> Result<(), String> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("`{name}` must be a probability in [0, 1], got {v}"))
            }
        }
        fn nonneg(name: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("`{name}` must be a finite number >= 0, got {v}"))
            }
        }
        fn positive(name: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("`{name}` must be > 0, got {v}"))
            }
        }
        fn channel(name: &str, key: &str) -> Result<Channel, String> {
            Channel::from_wire(key).ok_or_else(|| format!("`{name}`: `{key}` is not a channel of the input contract"))
        }
        if self.concurrency == 0 {
            return Err("`concurrency` must be >= 1".into());
        }
        if self.step_minutes == 0 || 1440 % self.step_minutes != 0 {
            return Err("`step_minutes` must divide a day (1, 2, 5, 10, 15, 20, 30, 60, 120, ...)".into());
        }
        if self.id_prefix.is_empty() || !self.id_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err("`id_prefix` must be non-empty ASCII letters, digits or _".into());
        }
        if self.currency.is_empty() || !self.currency.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("`currency` must be a non-empty ASCII code such as EUR".into());
        }
        positive("customer_days", self.customer_days)?;
        prob("diurnal_amplitude", self.diurnal_amplitude)?;
        nonneg("diurnal_peak_hour", self.diurnal_peak_hour)?;
        nonneg("synergy_days", self.synergy_days)?;
        positive("baseline.rate_per_day", self.baseline.rate_per_day)?;
        nonneg("baseline.propensity_sigma", self.baseline.propensity_sigma)?;
        nonneg("baseline.repeat_factor", self.baseline.repeat_factor)?;
        let p = &self.purchase;
        positive("purchase.delay_minutes", p.delay_minutes)?;
        prob("purchase.refractory_floor", p.refractory_floor)?;
        positive("purchase.refractory_recovery_days", p.refractory_recovery_days)?;
        prob("purchase.subscribe_prob", p.subscribe_prob)?;
        prob("purchase.extra_item_prob", p.extra_item_prob)?;
        for (k, v) in &p.navigation {
            channel("purchase.navigation", k)?;
            nonneg(&format!("purchase.navigation.{k}"), *v)?;
        }
        let b = &self.browse;
        nonneg("browse.rate_per_day", b.rate_per_day)?;
        nonneg("browse.intent_rate", b.intent_rate)?;
        nonneg("browse.customer_factor", b.customer_factor)?;
        prob("browse.signup_prob", b.signup_prob)?;
        if b.entry.values().sum::<f64>() <= 0.0 {
            return Err("`browse.entry` needs at least one channel with a positive weight".into());
        }
        for (k, v) in &b.entry {
            channel("browse.entry", k)?;
            nonneg(&format!("browse.entry.{k}"), *v)?;
        }
        let s = &self.session;
        positive("session.gap_seconds", s.gap_seconds)?;
        prob("session.continue_prob", s.continue_prob)?;
        prob("session.continue_intent_bonus", s.continue_intent_bonus)?;
        if s.continue_prob + s.continue_intent_bonus > 0.98 {
            return Err("`session.continue_prob + session.continue_intent_bonus` must be <= 0.98".into());
        }
        positive("session.intent_half", s.intent_half)?;
        prob("session.product_view_share", s.product_view_share)?;
        prob("session.search_share", s.search_share)?;
        if s.product_view_share + s.search_share > 1.0 {
            return Err("`session.product_view_share + session.search_share` must be <= 1".into());
        }
        prob("session.cart_add_max", s.cart_add_max)?;
        prob("session.cart_remove_prob", s.cart_remove_prob)?;
        prob("session.checkout_abandon_prob", s.checkout_abandon_prob)?;
        if s.max_events < 2 || s.search_terms == 0 {
            return Err("`session.max_events` must be >= 2 and `session.search_terms` >= 1".into());
        }
        let c = &self.cart;
        nonneg("cart.boost", c.boost)?;
        positive("cart.boost_half_life_hours", c.boost_half_life_hours)?;
        positive("cart.value_ref", c.value_ref)?;
        nonneg("cart.engagement_weight", c.engagement_weight)?;
        nonneg("cart.checkout_boost_factor", c.checkout_boost_factor)?;
        let k = &self.catalog;
        if k.products == 0 {
            return Err("`catalog.products` must be >= 1".into());
        }
        positive("catalog.price_median", k.price_median)?;
        nonneg("catalog.price_sigma", k.price_sigma)?;
        positive("catalog.popularity_skew", k.popularity_skew)?;
        if k.quantity_weights.is_empty() || k.quantity_weights.len() > 100 || k.quantity_weights.iter().sum::<f64>() <= 0.0 {
            return Err("`catalog.quantity_weights` needs 1 to 100 weights with a positive sum".into());
        }
        for v in &k.quantity_weights {
            nonneg("catalog.quantity_weights", *v)?;
        }
        positive("truth.inactivity_minutes", self.truth.inactivity_minutes)?;
        positive("truth.abandon_hours", self.truth.abandon_hours)?;
        for (name, ch) in &self.channels {
            let at = |f: &str| format!("channels.{name}.{f}");
            channel("channels", name)?;
            nonneg(&at("rate_per_day"), ch.rate_per_day)?;
            nonneg(&at("prospecting_days"), ch.prospecting_days)?;
            prob(&at("late_rate_fraction"), ch.late_rate_fraction)?;
            nonneg(&at("retarget_rate_per_day"), ch.retarget_rate_per_day)?;
            nonneg(&at("retarget_hours"), ch.retarget_hours)?;
            nonneg(&at("intent_rate"), ch.intent_rate)?;
            nonneg(&at("customer_factor"), ch.customer_factor)?;
            prob(&at("open_prob"), ch.open_prob)?;
            prob(&at("click_prob"), ch.click_prob)?;
            nonneg(&at("navigational_weight"), ch.navigational_weight)?;
            prob(&at("checkout_click_prob"), ch.checkout_click_prob)?;
            nonneg(&at("repeat_factor"), ch.repeat_factor)?;
            nonneg(&at("alone_factor"), ch.alone_factor)?;
            nonneg(&at("reminder_delay_hours"), ch.reminder_delay_hours)?;
            prob(&at("reminder_open_prob"), ch.reminder_open_prob)?;
            prob(&at("reminder_click_prob"), ch.reminder_click_prob)?;
            if let Some(sub) = &ch.intent_substitute {
                channel(&at("intent_substitute"), sub)?;
            }
            if ch.reminder_open_prob > 0.0 && ch.kind != ChannelKind::Email {
                return Err(format!("`{}`: cart reminders are emails; only an `email` channel can send them", at("reminder_open_prob")));
            }
            for (touch, e) in &ch.effects {
                let allowed: &[&str] = match ch.kind {
                    ChannelKind::Impression => &["impression", "click"],
                    ChannelKind::Click => &["click"],
                    ChannelKind::Email => &["email_open", "email_click"],
                };
                if !allowed.contains(&touch.as_str()) {
                    return Err(format!("`{}`: a channel of kind {:?} produces only {allowed:?} touches", at(&format!("effects.{touch}")), ch.kind));
                }
                nonneg(&at(&format!("effects.{touch}.size")), e.size)?;
                positive(&at(&format!("effects.{touch}.days")), e.days)?;
            }
        }
        let reminders = self.channels.values().filter(|c| c.enabled && c.reminder_open_prob > 0.0).count();
        if reminders > 1 {
            return Err("at most one enabled channel may send cart reminders".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_world_loads_and_round_trips() {
        let w = World::default_world();
        assert!(w.channels.len() >= 5);
        let again = World::from_toml_str(&w.to_toml()).unwrap();
        assert_eq!(w, again);
    }

    #[test]
    fn default_world_documents_every_channel_key() {
        let w = World::default_world();
        for c in w.channels.values() {
            let ch = toml::Value::try_from(c).unwrap();
            for key in ch.as_table().unwrap().keys() {
                let doc = if key == "effects" { "#   [channels.X.effects]".to_string() } else { format!("#   {key} ") };
                assert!(DEFAULT_WORLD.contains(&doc), "channel key `{key}` is not documented");
            }
        }
    }

    #[test]
    fn overrides_merge_and_errors_name_the_key() {
        let w = World::from_toml_str("seed = 7\n[channels.display]\nrate_per_day = 9.0\n").unwrap();
        assert_eq!(w.seed, 7);
        assert_eq!(w.channels["display"].rate_per_day, 9.0);
        assert_eq!(w.channels["display"].kind, ChannelKind::Impression);
        let e = World::from_toml_str("[session]\ncontinue_prob = 1.5\n").unwrap_err();
        assert!(e.contains("session.continue_prob"), "{e}");
        let e = World::from_toml_str("bogus = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = World::from_toml_str("[channels.tv]\nkind = \"impression\"\n").unwrap_err();
        assert!(e.contains("tv"), "{e}");
        let e = World::from_toml_str("[channels.display.effects.email_open]\nsize = 1.0\nkernel = \"exp\"\ndays = 1.0\n").unwrap_err();
        assert!(e.contains("email_open"), "{e}");
    }
}
