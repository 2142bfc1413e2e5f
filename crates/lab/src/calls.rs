//! The stand-ins' call log: `/var/log/hakube-lab/calls.log` of each node.

use std::time::Duration;

use crate::LabError;

/// One call of a stand-in on a node, from its call log. The log has two lines per call,
/// written by the stand-in itself (crates/lab/standins/standin-lib.sh):
///
/// ```text
/// <unix time s.ns> <pid> start <name> <argument>...     arguments quoted as bash's printf %q
/// <unix time s.ns> <pid> end <name> <exit code>
/// ```
///
/// Only the command line is recorded: nothing the stand-in read from standard input or files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The command, e.g. `kubeadm`.
    pub name: String,
    /// Its arguments, unquoted.
    pub args: Vec<String>,
    /// PID of the stand-in's process.
    pub pid: u32,
    /// When it started, as time since the Unix epoch (nanosecond resolution).
    pub start: Duration,
    /// When it ended; `None` while it runs (or if it was killed).
    pub end: Option<Duration>,
    /// Its exit code; `None` while it runs (or if it was killed).
    pub exit: Option<i32>,
}

impl Call {
    /// The command line as one string, arguments joined by spaces (for assertions and
    /// messages; not for running).
    pub fn command_line(&self) -> String {
        std::iter::once(self.name.as_str()).chain(self.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
    }
}

/// Parses the text of a call log into calls, in the order they started. Each `end` line
/// completes the latest open call with the same PID and name. `node` names the log in errors.
///
/// Errors: [`LabError::CallLog`] for a line that is not a start or end line.
pub fn parse_calls(node: &str, text: &str) -> Result<Vec<Call>, LabError> {
    let mut calls: Vec<Call> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = || LabError::CallLog { node: node.to_string(), line: index + 1, text: line.to_string() };
        let mut fields = line.splitn(5, ' ');
        let (Some(time), Some(pid), Some(event), Some(name)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        let rest = fields.next().unwrap_or("");
        let time = parse_time(time).ok_or_else(bad)?;
        let pid: u32 = pid.parse().map_err(|_| bad())?;
        match event {
            "start" => calls.push(Call {
                name: name.to_string(),
                args: split_bash_words(rest).ok_or_else(bad)?,
                pid,
                start: time,
                end: None,
                exit: None,
            }),
            "end" => {
                let exit: i32 = rest.trim().parse().map_err(|_| bad())?;
                let call = calls
                    .iter_mut()
                    .rev()
                    .find(|c| c.pid == pid && c.name == name && c.end.is_none())
                    .ok_or_else(bad)?;
                call.end = Some(time);
                call.exit = Some(exit);
            }
            _ => return Err(bad()),
        }
    }
    Ok(calls)
}

/// `1712345678.123456789` as a duration since the epoch.
fn parse_time(text: &str) -> Option<Duration> {
    let (secs, frac) = text.split_once('.')?;
    if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = format!("{frac:0<9}").parse().ok()?;
    Some(Duration::new(secs.parse().ok()?, nanos))
}

/// Splits words quoted by bash's `printf %q`: backslash escapes, `'...'`, `$'...'` (with
/// C escapes, where `\NNN` and `\xHH` are bytes), separated by unquoted spaces. Bytes that
/// are not UTF-8 become U+FFFD. `None` for an unterminated quote.
fn split_bash_words(text: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut bytes = text.bytes().peekable();
    loop {
        while bytes.peek() == Some(&b' ') {
            bytes.next();
        }
        if bytes.peek().is_none() {
            return Some(words);
        }
        let mut word = Vec::new();
        while let Some(&b) = bytes.peek() {
            if b == b' ' {
                break;
            }
            bytes.next();
            match b {
                b'\\' => word.push(bytes.next()?),
                b'\'' => loop {
                    match bytes.next()? {
                        b'\'' => break,
                        b => word.push(b),
                    }
                },
                b'$' if bytes.peek() == Some(&b'\'') => {
                    bytes.next();
                    loop {
                        match bytes.next()? {
                            b'\'' => break,
                            b'\\' => word.push(c_escape(&mut bytes)?),
                            b => word.push(b),
                        }
                    }
                }
                b => word.push(b),
            }
        }
        words.push(String::from_utf8_lossy(&word).into_owned());
    }
}

/// The byte of a C escape inside `$'...'`, after its backslash.
fn c_escape(bytes: &mut std::iter::Peekable<std::str::Bytes<'_>>) -> Option<u8> {
    let first = bytes.next()?;
    match first {
        b'n' => Some(b'\n'),
        b't' => Some(b'\t'),
        b'r' => Some(b'\r'),
        b'a' => Some(0x07),
        b'b' => Some(0x08),
        b'e' | b'E' => Some(0x1b),
        b'f' => Some(0x0c),
        b'v' => Some(0x0b),
        b'x' => number(bytes, 16, 2, 0, 0),
        b'0'..=b'7' => number(bytes, 8, 3, u32::from(first - b'0'), 1),
        b => Some(b),
    }
}

/// Reads up to `max` digits in `radix` (after `count` already read into `value`): a byte.
fn number(
    bytes: &mut std::iter::Peekable<std::str::Bytes<'_>>,
    radix: u32,
    max: usize,
    mut value: u32,
    mut count: usize,
) -> Option<u8> {
    while count < max {
        match bytes.peek().and_then(|&b| char::from(b).to_digit(radix)) {
            Some(d) => {
                value = value * radix + d;
                bytes.next();
                count += 1;
            }
            None => break,
        }
    }
    u8::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_and_end_lines_pair_by_pid_and_name() {
        let log = "1700000000.000000001 42 start kubeadm init --config /etc/hakube/secrets/kubeadm.yaml\n\
                   1700000000.5 43 start systemctl is-active --quiet kubelet\n\
                   1700000000.600000000 43 end systemctl 3\n\
                   1700000001.300000000 42 end kubeadm 0\n\
                   1700000002.000000000 44 start curl -fsSL https://example.invalid/x\n";
        let calls = parse_calls("master0", log).unwrap();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].name, "kubeadm");
        assert_eq!(calls[0].args, ["init", "--config", "/etc/hakube/secrets/kubeadm.yaml"]);
        assert_eq!(calls[0].start, Duration::new(1_700_000_000, 1));
        assert_eq!(calls[0].end, Some(Duration::new(1_700_000_001, 300_000_000)));
        assert_eq!(calls[0].exit, Some(0));
        assert_eq!(calls[1].start, Duration::new(1_700_000_000, 500_000_000));
        assert_eq!(calls[1].exit, Some(3));
        assert_eq!((calls[2].end, calls[2].exit), (None, None));
        assert_eq!(calls[2].command_line(), "curl -fsSL https://example.invalid/x");
    }

    #[test]
    fn bash_quoted_arguments_are_unquoted() {
        // What bash 5.2's printf %q writes for: "a b", "", "it's", "x\ny", "-o=short",
        // "é" (UTF-8 locale), "é" (C locale), "a\"b$c", "k=v,w", "\tAA".
        let log = "1.0 7 start kubectl a\\ b '' it\\'s $'x\\ny' -o=short é $'\\303\\251' a\\\"b\\$c k=v\\,w $'\\t\\x41\\101'\n";
        let calls = parse_calls("worker0", log).unwrap();
        assert_eq!(calls[0].args, ["a b", "", "it's", "x\ny", "-o=short", "é", "é", "a\"b$c", "k=v,w", "\tAA"]);
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line_number() {
        for (log, line) in [
            ("garbage\n", 1),
            ("1.0 7 start kubeadm x\n1.0 8 end kubeadm 0\n", 2),
            ("1.0 7 middle kubeadm\n", 1),
            ("1.0 x start kubeadm\n", 1),
            ("1.0 7 start kubeadm 'open\n", 1),
            ("1.0 7 start kubeadm\n2.0 7 end kubeadm zero\n", 2),
        ] {
            match parse_calls("master0", log) {
                Err(LabError::CallLog { line: l, node, .. }) => {
                    assert_eq!((l, node.as_str()), (line, "master0"), "{log:?}");
                }
                other => panic!("{log:?}: expected a call log error, got {other:?}"),
            }
        }
    }
}
