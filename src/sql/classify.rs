//! What a statement is, read from its leading keywords before it is proposed: a data
//! change, or which schema change. Reads are not written to the log at all.

use std::ffi::CString;

/// What a write statement does; the log entry records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum StatementKind {
    /// INSERT, UPDATE, DELETE, REPLACE (or one of them after WITH).
    Data = 1,
    CreateTable = 2,
    DropTable = 3,
    AlterTable = 4,
    CreateIndex = 5,
    DropIndex = 6,
    /// Views, triggers, ANALYZE, REINDEX.
    OtherSchema = 7,
}

impl StatementKind {
    pub fn from_u8(value: u8) -> Option<StatementKind> {
        use StatementKind::*;
        [Data, CreateTable, DropTable, AlterTable, CreateIndex, DropIndex, OtherSchema]
            .into_iter()
            .find(|k| *k as u8 == value)
    }

    pub fn is_schema_change(self) -> bool {
        self != StatementKind::Data
    }

    pub fn name(self) -> &'static str {
        match self {
            StatementKind::Data => "data change",
            StatementKind::CreateTable => "create table",
            StatementKind::DropTable => "drop table",
            StatementKind::AlterTable => "alter table",
            StatementKind::CreateIndex => "create index",
            StatementKind::DropIndex => "drop index",
            StatementKind::OtherSchema => "other schema change",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    #[error("a read-only statement ({0}): send it with Query, not Execute")]
    ReadOnly(String),
    #[error("{0} is not supported: {1}")]
    Unsupported(String, &'static str),
    #[error("not a SQL statement Quarry can apply (it starts with {0:?})")]
    Unknown(String),
    #[error("empty statement")]
    Empty,
}

/// Classifies one statement by its leading keywords. The classification only labels
/// the entry and refuses what cannot be replicated; SQLite itself checks, when the
/// entry applies, that the statement does no more than its label says.
pub fn classify(text: &str) -> Result<StatementKind, ClassifyError> {
    let words = leading_words(text, 4);
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let unsupported = |why| Err(ClassifyError::Unsupported(word(0).to_string(), why));
    match word(0) {
        "" => Err(ClassifyError::Empty),
        "INSERT" | "REPLACE" | "UPDATE" | "DELETE" | "WITH" => Ok(StatementKind::Data),
        "SELECT" | "VALUES" | "EXPLAIN" => Err(ClassifyError::ReadOnly(word(0).to_string())),
        "CREATE" => {
            let mut at = 1;
            if matches!(word(at), "TEMP" | "TEMPORARY") {
                return unsupported("temporary objects live outside the database and are not replicated");
            }
            if word(at) == "UNIQUE" {
                at += 1;
            }
            match word(at) {
                "TABLE" => Ok(StatementKind::CreateTable),
                "INDEX" => Ok(StatementKind::CreateIndex),
                "VIEW" | "TRIGGER" => Ok(StatementKind::OtherSchema),
                "VIRTUAL" => unsupported("virtual tables are not replicated"),
                other => Err(ClassifyError::Unknown(format!("CREATE {other}"))),
            }
        }
        "DROP" => match word(1) {
            "TABLE" => Ok(StatementKind::DropTable),
            "INDEX" => Ok(StatementKind::DropIndex),
            "VIEW" | "TRIGGER" => Ok(StatementKind::OtherSchema),
            other => Err(ClassifyError::Unknown(format!("DROP {other}"))),
        },
        "ALTER" => Ok(StatementKind::AlterTable),
        "ANALYZE" | "REINDEX" => Ok(StatementKind::OtherSchema),
        "BEGIN" | "COMMIT" | "END" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" => {
            unsupported("each Execute is one transaction already; send the statements together")
        }
        "ATTACH" | "DETACH" => unsupported("a database cannot reach files on the nodes"),
        "PRAGMA" => unsupported("pragmas change connection settings that are not replicated"),
        "VACUUM" => unsupported("VACUUM rewrites the database outside the log"),
        other => Err(ClassifyError::Unknown(other.to_string())),
    }
}

/// The first `n` words of a statement, upper-cased, skipping comments and whitespace.
/// A word ends at anything that is not a letter, digit or `_`.
fn leading_words(text: &str, n: usize) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = text;
    while words.len() < n {
        rest = skip_space_and_comments(rest);
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        words.push(rest[..end].to_ascii_uppercase());
        rest = &rest[end..];
    }
    words
}

fn skip_space_and_comments(mut text: &str) -> &str {
    loop {
        text = text.trim_start();
        if let Some(line) = text.strip_prefix("--") {
            text = line.find('\n').map_or("", |end| &line[end..]);
        } else if let Some(block) = text.strip_prefix("/*") {
            text = block.find("*/").map_or("", |end| &block[end + 2..]);
        } else {
            return text;
        }
    }
}

/// Splits a script into complete statements, as SQLite's own shell does: a `;`
/// ends a statement unless it is inside a string, a comment or a trigger's body.
/// Text after the last complete statement is returned as one (incomplete) statement;
/// statements holding nothing but comments are dropped.
pub fn split_statements(script: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut start = 0;
    for (at, _) in script.match_indices(';') {
        let candidate = &script[start..=at];
        if is_complete(candidate) {
            push_statement(&mut statements, candidate);
            start = at + 1;
        }
    }
    push_statement(&mut statements, &script[start..]);
    statements
}

fn push_statement(statements: &mut Vec<String>, text: &str) {
    let trimmed = text.trim();
    if !skip_space_and_comments(trimmed).trim_matches(';').trim().is_empty() {
        statements.push(trimmed.to_string());
    }
}

/// Whether `text` ends with a complete statement (`sqlite3_complete`).
fn is_complete(text: &str) -> bool {
    let Ok(text) = CString::new(text) else {
        return false;
    };
    // SAFETY: a NUL-terminated string that outlives the call.
    unsafe { rusqlite::ffi::sqlite3_complete(text.as_ptr()) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_classified_by_their_leading_keywords() {
        assert_eq!(classify("insert into t values (1)"), Ok(StatementKind::Data));
        assert_eq!(classify("  -- why\n/* c */ UPDATE t SET a = 1"), Ok(StatementKind::Data));
        assert_eq!(classify("CREATE TABLE users(name TEXT)"), Ok(StatementKind::CreateTable));
        assert_eq!(classify("create unique index i on t(a)"), Ok(StatementKind::CreateIndex));
        assert_eq!(classify("DROP INDEX i"), Ok(StatementKind::DropIndex));
        assert_eq!(classify("alter table t add column b"), Ok(StatementKind::AlterTable));
        assert_eq!(classify("CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; END"), Ok(StatementKind::OtherSchema));
        assert!(matches!(classify("SELECT 1"), Err(ClassifyError::ReadOnly(_))));
        assert!(matches!(classify("create temp table t(a)"), Err(ClassifyError::Unsupported(..))));
        assert!(matches!(classify("PRAGMA foreign_keys = OFF"), Err(ClassifyError::Unsupported(..))));
        assert!(matches!(classify("BEGIN"), Err(ClassifyError::Unsupported(..))));
        assert!(matches!(classify("attach 'x' as y"), Err(ClassifyError::Unsupported(..))));
        assert!(matches!(classify("hello"), Err(ClassifyError::Unknown(_))));
        assert_eq!(classify("  -- only a comment"), Err(ClassifyError::Empty));
    }

    #[test]
    fn scripts_split_at_semicolons_outside_strings_comments_and_triggers() {
        let script = "CREATE TABLE t(a); INSERT INTO t VALUES ('x;y'); -- a; comment\n\
                      CREATE TRIGGER g AFTER INSERT ON t BEGIN UPDATE t SET a = 1; END;\n\
                      INSERT INTO t VALUES (2)";
        let parts = split_statements(script);
        assert_eq!(parts.len(), 4, "{parts:?}");
        assert_eq!(parts[1], "INSERT INTO t VALUES ('x;y');");
        assert!(parts[2].starts_with("-- a; comment\nCREATE TRIGGER") && parts[2].ends_with("END;"));
        assert_eq!(parts[3], "INSERT INTO t VALUES (2)");
        assert!(split_statements(" ;; -- nothing\n").is_empty());
    }
}
