//! Windowed aggregations defined by Rhai scripts.
//!
//! Each metric keeps one partial state per (pane, Kafka partition), together with the highest
//! offset of that partition it includes. States are written to the store before the batch's
//! offsets are acknowledged, and an event at or below a state's offset is skipped, so replays
//! after a crash or rebalance never count an event twice. Reads merge the partials of every
//! partition and pane in a window, so several runners in one group report one exact result.

pub mod backfill;
mod derive;
mod keys;
pub mod lookup;
mod metric;
#[cfg(test)]
mod properties;
mod quantile;
mod query;
pub mod recompute;
mod reducer;
pub mod results;
mod script;
mod session;
mod sketch;
mod window;
mod write;

pub use derive::{Derivations, DeriveConfig};
pub use lookup::{Fetched, LookupConfig, Lookups};
pub use metric::{Metric, MetricConfig, Partial, TimeMode};
pub use quantile::{label as quantile_label, nearest_rank, ACCURACY as QUANTILE_ACCURACY};
pub use query::{history, history_step, read, windows, Backfilling, MetricValue, Point};
pub use reducer::ReducerKind;
pub use session::{Measure, SessionConfig};
pub use window::Window;
pub use write::{Absorbed, Aggregator, Loaded};

use crate::event::{Record, Schema};
use crate::script::{MapFields, ScriptError};
use crate::store::StateStore;
use crate::telemetry::Stats;
use std::collections::HashSet;

/// The compiled metrics of a pipeline.
pub struct MetricSet {
    metrics: Vec<Metric>,
    /// The lookup tables its metrics read.
    lookups: Lookups,
    /// The fields the record maps need, when any metric calls a script function per record.
    map_fields: Option<MapFields>,
    /// The `[[derive]]` fields its metrics may read, set before they apply a record.
    derivations: Derivations,
}

impl MetricSet {
    /// Loads the lookup tables and compiles every metric; the error names the script or the
    /// table's file, and names duplicates.
    pub fn load(
        configs: &[MetricConfig],
        lookups: &[LookupConfig],
        schema: &Schema,
    ) -> Result<MetricSet, ScriptError> {
        Self::load_all(configs, (lookups, &Fetched::default()), &[], schema)
            .map_err(|mut errors| errors.remove(0))
    }

    /// Loads the lookup tables (the collections' from the documents fetched) and compiles every
    /// derivation and metric, and on failure returns every problem, not only the first.
    /// `schema` holds the derived fields ([`DeriveConfig::field`]).
    pub fn load_all(
        configs: &[MetricConfig],
        (lookups, fetched): (&[LookupConfig], &Fetched),
        derive: &[DeriveConfig],
        schema: &Schema,
    ) -> Result<MetricSet, Vec<ScriptError>> {
        let lookups = Lookups::load(lookups, fetched)?;
        let mut errors = Vec::new();
        let derivations = Derivations::load(derive, schema, &lookups)
            .map_err(|e| errors.extend(e))
            .unwrap_or_default();
        let mut seen = HashSet::new();
        let mut metrics = Vec::with_capacity(configs.len());
        for c in configs {
            if !seen.insert(c.name.as_str()) {
                errors.push(ScriptError::whole_file(
                    &c.script,
                    format!("metric name {:?} is used twice", c.name),
                ));
            }
            match Metric::load(c, schema, &lookups) {
                Ok(m) => metrics.push(m),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut map_fields: Option<MapFields> = None;
        for m in metrics.iter().filter(|m| m.needs_event_map()) {
            map_fields
                .get_or_insert_with(MapFields::default)
                .union(m.map_fields());
        }
        Ok(MetricSet {
            metrics,
            lookups,
            map_fields,
            derivations,
        })
    }

    /// Sets the derived fields of every record (before the records are stored, and before any
    /// metric applies them); a failure is counted in `stats` and leaves that field missing.
    pub fn derive(&self, events: &mut [Record], stats: &Stats) {
        if !self.derivations.is_empty() {
            self.derivations.apply(events, stats);
        }
    }

    /// The lookup tables its metrics may read.
    pub fn lookups(&self) -> &Lookups {
        &self.lookups
    }

    /// The fields of the one record map per record that the metrics calling scripts share, or
    /// `None` when no metric calls a script per record.
    pub fn map_fields(&self) -> Option<&MapFields> {
        self.map_fields.as_ref()
    }

    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    /// A set of only the metric at `index` (the compiled script is shared, not compiled again).
    pub fn only(&self, index: usize) -> MetricSet {
        let m = self.metrics[index].clone();
        let map_fields = m.needs_event_map().then(|| m.map_fields().clone());
        MetricSet {
            metrics: vec![m],
            lookups: self.lookups.clone(),
            map_fields,
            derivations: self.derivations.clone(),
        }
    }

    /// A set of only a draft metric (`config` with its script's text `source`), compiled with
    /// this set's lookup tables and derived fields: what the workbench checks and tries.
    pub fn draft(
        &self,
        config: &MetricConfig,
        source: String,
        schema: &Schema,
    ) -> Result<MetricSet, ScriptError> {
        let m = Metric::load_text(config, source, schema, &self.lookups)?;
        let map_fields = m.needs_event_map().then(|| m.map_fields().clone());
        Ok(MetricSet {
            metrics: vec![m],
            lookups: self.lookups.clone(),
            map_fields,
            derivations: self.derivations.clone(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }

    /// Current value of every metric for the window ending with the pane holding `at_ms`.
    pub async fn read_all(
        &self,
        store: &dyn StateStore,
        at_ms: i64,
    ) -> anyhow::Result<Vec<MetricValue>> {
        let mut out = Vec::with_capacity(self.metrics.len());
        for m in &self.metrics {
            out.push(read(m, store, at_ms).await?);
        }
        Ok(out)
    }
}
