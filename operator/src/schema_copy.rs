//! Making the target's schema match the source's before the roll: the
//! selected tables are compared where the target has them (a difference
//! that would corrupt the copy blocks the migration), and, in `copy` mode,
//! what the target lacks is created from the source's `DESCRIBE`
//! ([`crate::schema_plan`]). Nothing on the target is altered or dropped.

use std::collections::{BTreeMap, BTreeSet};

use ferry_sidecar::bulk::schema::{self as tables, SchemaError};
use scylla::client::session::Session;

use crate::crd::{CassandraMigrationSpec, SchemaMode};
use crate::schema_plan::{self, Action, Described};
use crate::system_schema;

/// Why the schema step did not pass.
#[derive(Debug, thiserror::Error)]
pub enum SchemaCopyError {
    /// The target has a selected table, different: copying into it would
    /// corrupt data. The user must fix the target (or the selection).
    #[error("{0}")]
    Mismatch(String),
    /// `verify` mode, and the target lacks what is selected.
    #[error("the target lacks {0} (spec.schema is verify: create them, or set it to copy)")]
    Missing(String),
    /// The source cannot describe itself (Cassandra before 4.0).
    #[error("{0}")]
    Unsupported(String),
    /// Reading or writing a cluster failed; worth another try.
    #[error("{what}: {reason}")]
    Cql { what: String, reason: String },
    /// The selection names nothing on the source.
    #[error("{0}")]
    Selection(String),
}

/// What the step did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Objects created on the target, as `kind ks.name`.
    pub created: Vec<String>,
    /// Selected tables the target already had, matching.
    pub matching: Vec<String>,
    /// Objects left out, with why.
    pub left_out: Vec<String>,
    /// The replication target keyspaces get (`copy` mode): also what the
    /// proxies give a keyspace a client creates during the migration.
    pub replication: Option<String>,
}

fn cql_error(what: impl Into<String>) -> impl FnOnce(String) -> SchemaCopyError {
    let what = what.into();
    move |reason| SchemaCopyError::Cql { what, reason }
}

/// Compares, and in `copy` mode creates, the target's schema for the
/// migration's selection.
pub async fn make_target_schema(
    source: &Session,
    target: &Session,
    spec: &CassandraMigrationSpec,
) -> Result<Outcome, SchemaCopyError> {
    let selected = tables::select_tables(
        source,
        &spec.keyspaces.include,
        &spec.tables.include,
        &spec.keyspaces.exclude,
        &spec.tables.exclude,
    )
    .await
    .map_err(|e| match e {
        SchemaError::Query { .. } => cql_error("reading the source's tables")(e.to_string()),
        other => SchemaCopyError::Selection(other.to_string()),
    })?;
    let (mut outcome, missing) = compare(source, target, &selected).await?;
    if spec.schema == SchemaMode::Verify {
        if missing.is_empty() {
            return Ok(outcome);
        }
        return Err(SchemaCopyError::Missing(missing.join(", ")));
    }
    let replication =
        schema_plan::replication(spec.target.replication.as_ref(), &nodes_per_dc(target));
    outcome.replication = Some(replication.clone());
    if missing.is_empty() {
        return Ok(outcome);
    }
    let wanted: BTreeSet<(String, String)> = selected.iter().cloned().collect();
    let keyspaces: BTreeSet<&str> = wanted.iter().map(|(ks, _)| ks.as_str()).collect();
    for keyspace in keyspaces {
        let objects = match describe(source, keyspace).await {
            Ok(objects) => objects,
            // Before 4.0: the same objects, built from system_schema.
            Err(SchemaCopyError::Unsupported(_)) => {
                system_schema::describe_from_tables(source, keyspace)
                    .await
                    .map_err(cql_error(format!(
                        "reading {keyspace}'s system_schema on the source"
                    )))?
            }
            Err(e) => return Err(e),
        };
        for action in schema_plan::plan(&objects, &wanted, &replication) {
            match action {
                Action::Create { what, cql } => {
                    target.query_unpaged(cql.as_str(), ()).await.map_err(|e| {
                        cql_error(format!("creating {what} on the target"))(e.to_string())
                    })?;
                    outcome.created.push(what);
                }
                Action::LeftOut { what, why } => outcome.left_out.push(format!("{what}: {why}")),
            }
        }
    }
    target
        .await_schema_agreement()
        .await
        .map_err(|e| cql_error("waiting for the target's schema agreement")(e.to_string()))?;
    // What was created must now match, like what was there.
    let (_, still_missing) = compare(source, target, &selected).await?;
    if !still_missing.is_empty() {
        return Err(cql_error("creating the schema on the target")(format!(
            "still missing after the copy: {}",
            still_missing.join(", ")
        )));
    }
    Ok(outcome)
}

/// Each selected table on the target: matching (listed in the outcome),
/// missing (returned), or different (an error naming the difference).
async fn compare(
    source: &Session,
    target: &Session,
    selected: &[(String, String)],
) -> Result<(Outcome, Vec<String>), SchemaCopyError> {
    let mut outcome = Outcome::default();
    let mut missing = Vec::new();
    for (keyspace, table) in selected {
        let on_source = tables::read_table(source, "source", keyspace, table)
            .await
            .map_err(|e| {
                cql_error(format!("reading {keyspace}.{table} on the source"))(e.to_string())
            })?;
        match tables::read_table(target, "target", keyspace, table).await {
            Ok(on_target) => {
                on_source
                    .check_matches(&on_target)
                    .map_err(|e| SchemaCopyError::Mismatch(e.to_string()))?;
                outcome.matching.push(format!("{keyspace}.{table}"));
            }
            Err(SchemaError::UnknownTable { .. } | SchemaError::UnknownKeyspace { .. }) => {
                missing.push(format!("{keyspace}.{table}"));
            }
            Err(e) => {
                return Err(cql_error(format!(
                    "reading {keyspace}.{table} on the target"
                ))(e.to_string()))
            }
        }
    }
    Ok((outcome, missing))
}

/// The source's `DESCRIBE KEYSPACE`, object by object.
async fn describe(source: &Session, keyspace: &str) -> Result<Vec<Described>, SchemaCopyError> {
    let cql = format!("DESCRIBE KEYSPACE {}", schema_plan::quote(keyspace));
    let result = source.query_unpaged(cql.as_str(), ()).await.map_err(|e| {
        let text = e.to_string();
        if text.to_lowercase().contains("syntax") {
            SchemaCopyError::Unsupported(format!(
                "the source does not answer DESCRIBE (Cassandra before 4.0; its system_schema is read instead): {text}"
            ))
        } else {
            cql_error(format!("DESCRIBE KEYSPACE {keyspace} on the source"))(text)
        }
    })?;
    let rows = result
        .into_rows_result()
        .map_err(|e| cql_error("reading DESCRIBE's answer")(e.to_string()))?;
    let typed = rows
        .rows::<(String, String, String, String)>()
        .map_err(|e| cql_error("reading DESCRIBE's answer")(e.to_string()))?;
    let mut objects = Vec::new();
    for row in typed {
        let (keyspace, kind, name, create) =
            row.map_err(|e| cql_error("reading DESCRIBE's answer")(e.to_string()))?;
        objects.push(Described {
            keyspace,
            kind,
            name,
            create,
        });
    }
    Ok(objects)
}

/// How many nodes each of the target's data centers has, as the driver
/// sees the ring.
fn nodes_per_dc(target: &Session) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for node in target.get_cluster_state().get_nodes_info() {
        if let Some(dc) = node.datacenter.clone() {
            *out.entry(dc).or_insert(0) += 1;
        }
    }
    out
}
