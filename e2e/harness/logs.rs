//! Reading CRI container log files:
//! `<RFC 3339 UTC time with fraction> <stdout|stderr> <P|F> <content>\n`.

use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, FixedOffset};

use super::{POLL_INTERVAL, WAIT_LIMIT};

/// One line of a CRI log file.
#[derive(Clone, Debug, PartialEq)]
pub struct LogLine {
    pub time: DateTime<FixedOffset>,
    /// "stdout" or "stderr".
    pub stream: String,
    /// "P" (partial: the line continues in the next entry) or "F" (full).
    pub tag: String,
    pub content: String,
}

/// True for `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$`.
fn is_cri_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 22
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..b.len() - 1)
        && b[b.len() - 1] == b'Z'
}

/// Parses one line (without its newline); panics, naming it, if malformed.
pub fn parse_log_line(line: &str) -> LogLine {
    let mut fields = line.splitn(4, ' ');
    let (Some(time), Some(stream), Some(tag), Some(content)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        panic!("malformed CRI log line (fewer than 4 fields): {line:?}");
    };
    assert!(is_cri_timestamp(time), "malformed CRI log timestamp {time:?} in {line:?}");
    let time = DateTime::parse_from_rfc3339(time).unwrap_or_else(|e| panic!("bad timestamp in {line:?}: {e}"));
    assert!(stream == "stdout" || stream == "stderr", "bad stream {stream:?} in {line:?}");
    assert!(tag == "P" || tag == "F", "bad tag {tag:?} in {line:?}");
    LogLine { time, stream: stream.to_owned(), tag: tag.to_owned(), content: content.to_owned() }
}

/// Parses the complete lines of `text`; with `complete`, the text must end
/// with a newline, otherwise a trailing partial line is ignored.
pub fn parse_log(text: &str, complete: bool) -> Vec<LogLine> {
    let body = match text.rfind('\n') {
        Some(end) => {
            assert!(!complete || end == text.len() - 1, "log does not end with a newline: {text:?}");
            &text[..end]
        }
        None => {
            assert!(!complete || text.is_empty(), "log does not end with a newline: {text:?}");
            return Vec::new();
        }
    };
    body.split('\n').map(parse_log_line).collect()
}

/// Reads and parses a finished log file (every line must be well formed and terminated).
pub fn read_log(path: &Path) -> Vec<LogLine> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read log {}: {e}", path.display()));
    let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("log {} is not UTF-8: {e}", path.display()));
    parse_log(&text, true)
}

/// Joins partial entries: the guest's lines as (stream, line), in order of completion.
pub fn full_lines(lines: &[LogLine]) -> Vec<(String, String)> {
    let mut pending_out = String::new();
    let mut pending_err = String::new();
    let mut out = Vec::new();
    for line in lines {
        let pending = if line.stream == "stdout" { &mut pending_out } else { &mut pending_err };
        pending.push_str(&line.content);
        if line.tag == "F" {
            out.push((line.stream.clone(), std::mem::take(pending)));
        }
    }
    out
}

/// True when the joined lines contain `content` on `stream`.
pub fn has_line(lines: &[(String, String)], stream: &str, content: &str) -> bool {
    lines.iter().any(|(s, c)| s == stream && c == content)
}

/// Polls a (possibly still growing) log until it holds the full line
/// `content` on `stream`; returns the joined lines. Panics after [`WAIT_LIMIT`].
pub async fn wait_log_line(path: &Path, stream: &str, content: &str) -> Vec<(String, String)> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let lines = full_lines(&parse_log(&text, false));
        if has_line(&lines, stream, content) {
            return lines;
        }
        if Instant::now() > deadline {
            panic!(
                "log {} has no {stream} line {content:?} after {WAIT_LIMIT:?}; it holds:\n{}",
                path.display(),
                text.chars().take(4000).collect::<String>()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
