//! `quarryctl sql` and `quarryctl query`: SQL writes, reads and schemas, printed as
//! aligned tables (or JSON).

use std::path::PathBuf;

use clap::Args;
use quarry::client::{Client, ClientError};
use quarry::proto::{self, sql_value::Value as V};
use quarry::sql::split_statements;

/// Parameters of a statement, from the command line.
#[derive(Args)]
pub struct Params {
    /// A positional parameter (`?`), in order: NULL, an integer, a real, x'hex' for a
    /// blob, or text ('quoted' to keep text that looks like a number).
    #[arg(long = "param", value_name = "VALUE", allow_hyphen_values = true)]
    params: Vec<String>,
    /// A named parameter (`:name`, `@name`, `$name`), as NAME=VALUE.
    #[arg(long = "named", value_name = "NAME=VALUE")]
    named: Vec<String>,
}

#[derive(Args)]
pub struct SqlArgs {
    /// The database (created by its first write); `schema DB` shows DB's schema.
    database: String,
    /// One statement (or several separated by `;`), applied atomically.
    statement: Option<String>,
    /// Read the statements from a file instead (all applied atomically).
    #[arg(long, conflicts_with = "statement")]
    file: Option<PathBuf>,
    #[command(flatten)]
    params: Params,
}

#[derive(Args)]
pub struct QueryArgs {
    /// The database.
    database: String,
    /// One read-only statement.
    statement: String,
    #[command(flatten)]
    params: Params,
    /// Read this node's replica without confirming leadership (may be stale).
    #[arg(long)]
    serializable: bool,
    /// Answer at most this many rows (0: up to 10,000, and refuse a query returning more).
    #[arg(long, default_value_t = 0)]
    max_rows: u32,
}

/// Why a command line cannot be sent.
#[derive(Debug)]
pub struct Usage(pub String);

fn value(text: &str) -> proto::SqlValue {
    let value = if text.eq_ignore_ascii_case("null") {
        None
    } else if let Ok(i) = text.parse::<i64>() {
        Some(V::Integer(i))
    } else if let Ok(r) = text.parse::<f64>() {
        Some(V::Real(r))
    } else if let Some(hex) =
        text.strip_prefix("x'").or_else(|| text.strip_prefix("X'")).and_then(|t| t.strip_suffix('\''))
    {
        match decode_hex(hex) {
            Some(blob) => Some(V::Blob(blob.into())),
            None => Some(V::Text(text.to_string())),
        }
    } else if text.len() >= 2 && text.starts_with('\'') && text.ends_with('\'') {
        Some(V::Text(text[1..text.len() - 1].to_string()))
    } else {
        Some(V::Text(text.to_string()))
    };
    proto::SqlValue { value }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

fn statement(sql: String, params: &Params) -> Result<proto::SqlStatement, Usage> {
    let mut named = std::collections::HashMap::new();
    for pair in &params.named {
        let (name, text) = pair.split_once('=').ok_or_else(|| Usage(format!("--named {pair:?}: write NAME=VALUE")))?;
        named.insert(name.to_string(), value(text));
    }
    Ok(proto::SqlStatement { sql, params: params.params.iter().map(|p| value(p)).collect(), named })
}

/// `quarryctl sql DB STATEMENT | --file F`, or `quarryctl sql schema DB`.
pub async fn sql(client: &Client, args: SqlArgs, json: bool) -> Result<(), SqlError> {
    if args.database == "schema" && args.file.is_none() {
        if let Some(database) = args.statement.as_deref().filter(|s| quarry::sql::check_database_name(s).is_ok()) {
            return schema(client, database, json).await;
        }
    }
    let text = match (&args.statement, &args.file) {
        (Some(text), None) => text.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map_err(|e| SqlError::Usage(Usage(format!("cannot read {}: {e}", file.display()))))?,
        _ => return Err(SqlError::Usage(Usage("give a statement or --file".into()))),
    };
    let parts = split_statements(&text);
    if parts.is_empty() {
        return Err(SqlError::Usage(Usage("no statement to execute".into())));
    }
    let has_params = !args.params.params.is_empty() || !args.params.named.is_empty();
    if has_params && parts.len() > 1 {
        return Err(SqlError::Usage(Usage("parameters need a single statement".into())));
    }
    let statements = parts
        .iter()
        .map(|p| statement(p.clone(), &args.params))
        .collect::<Result<Vec<_>, _>>()
        .map_err(SqlError::Usage)?;
    let answer = client.sql_execute(&args.database, statements).await?;
    if json {
        let results: Vec<_> = answer
            .results
            .iter()
            .map(|r| serde_json::json!({ "kind": kind_name(r.kind), "rows_affected": r.rows_affected, "last_insert_rowid": r.last_insert_rowid }))
            .collect();
        println!("{}", serde_json::json!({ "results": results }));
    } else {
        let rows: Vec<Vec<String>> = answer
            .results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                vec![
                    i.to_string(),
                    kind_name(r.kind).into(),
                    r.rows_affected.to_string(),
                    r.last_insert_rowid.to_string(),
                ]
            })
            .collect();
        print_table(&["#", "kind", "rows_affected", "last_insert_rowid"], &rows);
    }
    Ok(())
}

fn kind_name(kind: i32) -> &'static str {
    proto::SqlStatementKind::try_from(kind).map_or("unknown", |k| match k {
        proto::SqlStatementKind::SqlDataChange => "data change",
        proto::SqlStatementKind::SqlCreateTable => "create table",
        proto::SqlStatementKind::SqlDropTable => "drop table",
        proto::SqlStatementKind::SqlAlterTable => "alter table",
        proto::SqlStatementKind::SqlCreateIndex => "create index",
        proto::SqlStatementKind::SqlDropIndex => "drop index",
        proto::SqlStatementKind::SqlOtherSchemaChange => "schema change",
        proto::SqlStatementKind::Unspecified => "unknown",
    })
}

/// `quarryctl query DB SELECT`.
pub async fn query(client: &Client, args: QueryArgs, json: bool) -> Result<(), SqlError> {
    let statement = statement(args.statement, &args.params).map_err(SqlError::Usage)?;
    let answer = client.sql_query(&args.database, statement, args.serializable, args.max_rows).await?;
    let names: Vec<&str> = answer.columns.iter().map(|c| c.name.as_str()).collect();
    if json {
        let rows: Vec<Vec<serde_json::Value>> =
            answer.rows.iter().map(|r| r.values.iter().map(json_value).collect()).collect();
        let columns: Vec<_> =
            answer.columns.iter().map(|c| serde_json::json!({ "name": c.name, "type": c.declared_type })).collect();
        println!("{}", serde_json::json!({ "columns": columns, "rows": rows, "more": answer.more }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answer.rows.iter().map(|r| r.values.iter().map(text_value).collect()).collect();
    print_table(&names, &rows);
    if answer.more {
        println!("(more rows: raise --max-rows or narrow the query)");
    }
    Ok(())
}

async fn schema(client: &Client, database: &str, json: bool) -> Result<(), SqlError> {
    let answer = client.sql_schema(database, false).await?;
    if json {
        let objects: Vec<_> = answer
            .objects
            .iter()
            .map(|o| serde_json::json!({ "type": o.r#type, "name": o.name, "table": o.table, "sql": o.sql }))
            .collect();
        let changes: Vec<_> = answer
            .changes
            .iter()
            .map(|c| serde_json::json!({ "index": c.index, "kind": kind_name(c.kind), "sql": c.sql }))
            .collect();
        let image = serde_json::json!({ "bytes": answer.image_bytes, "crc32": answer.image_crc32 });
        println!("{}", serde_json::json!({ "objects": objects, "changes": changes, "image": image }));
        return Ok(());
    }
    let objects: Vec<Vec<String>> =
        answer.objects.iter().map(|o| vec![o.r#type.clone(), o.name.clone(), o.table.clone(), o.sql.clone()]).collect();
    print_table(&["type", "name", "table", "sql"], &objects);
    println!("\nschema changes (latest {}, oldest first):", answer.changes.len());
    let changes: Vec<Vec<String>> =
        answer.changes.iter().map(|c| vec![c.index.to_string(), kind_name(c.kind).into(), c.sql.clone()]).collect();
    print_table(&["log index", "kind", "sql"], &changes);
    println!("\ndatabase file: {} bytes, crc32 {:08x}", answer.image_bytes, answer.image_crc32);
    Ok(())
}

fn text_value(v: &proto::SqlValue) -> String {
    match &v.value {
        None => "NULL".into(),
        Some(V::Integer(i)) => i.to_string(),
        Some(V::Real(r)) => r.to_string(),
        Some(V::Text(t)) => t.clone(),
        Some(V::Blob(b)) => format!("x'{}'", b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
    }
}

fn json_value(v: &proto::SqlValue) -> serde_json::Value {
    match &v.value {
        None => serde_json::Value::Null,
        Some(V::Integer(i)) => (*i).into(),
        Some(V::Real(r)) => (*r).into(),
        Some(V::Text(t)) => t.clone().into(),
        Some(V::Blob(_)) => text_value(v).into(),
    }
}

/// Columns padded to their widest cell, a rule under the header.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    line(
        widths
            .iter()
            .map(|w| {
                &"--------------------------------------------------------------------------------"[..(*w).min(80)]
            })
            .collect(),
    );
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub enum SqlError {
    Usage(Usage),
    Client(ClientError),
}

impl From<ClientError> for SqlError {
    fn from(e: ClientError) -> Self {
        SqlError::Client(e)
    }
}
