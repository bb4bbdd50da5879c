//! Drawing a [`View`] as text, and the terminal it is drawn on: raw mode
//! and the alternate screen while `gateway top` runs, restored on `q`,
//! Ctrl-C, an error or a panic alike (the guard's `Drop`).
//!
//! Every string from the gateway is drawn through [`visible`]: a client id
//! is whatever a token's claim says, and control characters in it (ESC
//! sequences, bidi overrides) must not reach the operator's terminal.
use std::{
    borrow::Cow,
    io::{Stdout, Write},
    time::Instant,
};

use anyhow::Result;
use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    execute, queue,
    terminal::{self, ClearType},
};

use super::view::View;

/// Whether `c` would act on a terminal rather than show: C0 and C1
/// controls (ESC, CSI, BEL, ...), DEL, and the invisible formatting
/// characters that reorder or hide text (bidi embeddings, overrides and
/// isolates, zero-width marks).
fn acts(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

/// `text` with every character that would act on a terminal written as a
/// visible escape (`\u{1b}`).
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(acts) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match acts(c) {
            true => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            false => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `--once --json`'s text, with the characters [`visible`] escapes written
/// as JSON `\uXXXX` escapes: the same data for a script, nothing for a
/// terminal to act on. (serde_json escapes only C0 controls itself.)
pub fn json(view: &View) -> serde_json::Result<String> {
    let text = serde_json::to_string_pretty(view)?;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // Outside strings JSON has only ASCII punctuation and whitespace
        // (`\n`, which serde_json wrote, so it is not escaped again).
        if acts(c) && c != '\n' {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// A JSON value from the gateway as drawn text.
fn shown(value: &serde_json::Value) -> Cow<'_, str> {
    match value {
        serde_json::Value::String(text) => visible(text),
        other => Cow::Owned(visible(&other.to_string()).into_owned()),
    }
}

/// The view as lines of text: the same for the screen and `--once`.
pub fn lines(view: &View, admin_url: &str) -> Vec<String> {
    let mut out = vec![format!(
        "gateway top — {} — every {:.1}s — q to quit",
        visible(admin_url),
        super::REFRESH.as_secs_f64()
    )];
    out.push(String::new());
    out.push(format!(
        "{:<24} {:<12} {:>10} {:>9} {:>7} {:>7}",
        "ROUTE", "TIER", "REQUESTS", "REQ/S", "4XX%", "5XX%"
    ));
    for r in &view.routes {
        out.push(format!(
            "{:<24} {:<12} {:>10} {:>9.1} {:>6.1}% {:>6.1}%",
            visible(&r.route),
            visible(&r.tier),
            r.requests,
            r.per_sec,
            r.client_error_rate * 100.0,
            r.server_error_rate * 100.0
        ));
    }
    out.push(String::new());
    out.push(format!(
        "{:<36} {:<12} {:>9} {:>16}",
        "BUSIEST CLIENT", "TIER", "REQ/S", "REMAINING"
    ));
    for c in &view.clients {
        out.push(format!(
            "{:<36} {:<12} {:>9.1} {:>16}",
            visible(&c.id),
            visible(&c.tier),
            c.per_sec,
            format!("{}/{}", c.remaining, c.limit)
        ));
    }
    out.push(String::new());
    out.push(format!(
        "{:<40} {:<18} {:>10} {:>10}",
        "BAN", "REASON", "LEFT", "WHERE"
    ));
    for b in &view.bans {
        out.push(format!(
            "{:<40} {:<18} {:>9.0}s {:>10}",
            visible(b["target"].as_str().unwrap_or("?")),
            visible(b["reason"].as_str().unwrap_or("?")),
            b["seconds_left"].as_f64().unwrap_or(0.0),
            visible(b["enforced_in"].as_str().unwrap_or("?")),
        ));
    }
    out.push(String::new());
    match &view.xdp {
        None => out.push("XDP: no program loaded".to_owned()),
        Some(rows) => {
            out.push(format!(
                "{:<28} {:>14} {:>10}",
                "XDP VERDICT", "PACKETS", "PKT/S"
            ));
            for x in rows {
                out.push(format!(
                    "{:<28} {:>14} {:>10.1}",
                    visible(&x.verdict),
                    x.packets,
                    x.per_sec
                ));
            }
        }
    }
    out.push(String::new());
    out.push(format!(
        "{:<24} {:>10} {:>12}",
        "UPSTREAM", "HEALTHY", "SHED TIERS"
    ));
    for u in &view.upstreams {
        out.push(format!(
            "{:<24} {:>10} {:>12}",
            visible(u["name"].as_str().unwrap_or("?")),
            format!("{}/{}", shown(&u["usable"]), shown(&u["servers"])),
            shown(&u["shed_tiers"])
        ));
    }
    out
}

/// The terminal in raw mode on the alternate screen, until dropped.
pub struct Terminal {
    out: Stdout,
}

impl Terminal {
    pub fn enter() -> Result<Self> {
        terminal::enable_raw_mode()?;
        // Dropped on an error below: raw mode is restored all the same.
        let mut terminal = Self {
            out: std::io::stdout(),
        };
        execute!(terminal.out, terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(terminal)
    }

    /// Clears the screen and writes `lines`, cut to its size.
    pub fn draw(&mut self, lines: &[String]) -> Result<()> {
        // A pseudo-terminal nobody sized says 0x0.
        let (width, height) = match terminal::size() {
            Ok((w, h)) if w > 0 && h > 0 => (w, h),
            _ => (160, 60),
        };
        queue!(self.out, terminal::Clear(ClearType::All))?;
        for (row, line) in lines.iter().take(usize::from(height)).enumerate() {
            let line: String = line.chars().take(usize::from(width)).collect();
            let row = u16::try_from(row).unwrap_or(u16::MAX);
            queue!(self.out, cursor::MoveTo(0, row))?;
            write!(self.out, "{line}")?;
        }
        self.out.flush()?;
        Ok(())
    }

    /// Waits for keys until `deadline`; true on `q`, Esc or Ctrl-C.
    pub fn quit_requested(&mut self, deadline: Instant) -> Result<bool> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !event::poll(left)? {
                return Ok(false);
            }
            if let Event::Key(key) = event::read()? {
                let ctrl_c =
                    key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
                let quit = matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c;
                if quit && key.kind != KeyEventKind::Release {
                    return Ok(true);
                }
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = execute!(self.out, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::top::view::{ClientRow, RouteRow};

    /// A token's client claim that would clear the screen, set the window
    /// title, ring the bell, send CSI as one C1 character and reverse the
    /// rest of the line.
    const HOSTILE: &str = "evil\u{1b}[2J\u{1b}]0;owned\u{7}\u{9b}31m\u{202e}txt.exe";

    fn acting(text: &str) -> Vec<char> {
        text.chars().filter(|c| acts(*c)).collect()
    }

    fn view() -> View {
        View {
            interval_seconds: 1.0,
            routes: vec![RouteRow {
                route: format!("/r{HOSTILE}"),
                tier: HOSTILE.into(),
                requests: 1,
                per_sec: 1.0,
                client_error_rate: 0.0,
                server_error_rate: 0.0,
            }],
            clients: vec![ClientRow {
                id: HOSTILE.into(),
                tier: "gold".into(),
                per_sec: 2.0,
                remaining: 3,
                limit: 4,
            }],
            bans: vec![serde_json::json!({
                "target": HOSTILE, "reason": HOSTILE, "seconds_left": 5.0, "enforced_in": HOSTILE
            })],
            xdp: None,
            upstreams: vec![serde_json::json!({
                "name": HOSTILE, "usable": HOSTILE, "servers": 1, "shed_tiers": [HOSTILE]
            })],
        }
    }

    #[test]
    fn nothing_from_the_gateway_reaches_the_terminal_as_a_control() {
        let lines = lines(&view(), "http://127.0.0.1:9901");
        for line in &lines {
            assert_eq!(acting(line), Vec::<char>::new(), "{line:?}");
        }
        let client = lines.iter().find(|l| l.starts_with("evil")).unwrap();
        assert!(
            client.starts_with(r"evil\u{1b}[2J\u{1b}]0;owned\u{7}\u{9b}31m\u{202e}txt.exe"),
            "{client:?}"
        );
        assert_eq!(visible("plain id-1 ünïcode"), "plain id-1 ünïcode");
    }

    #[test]
    fn the_json_snapshot_has_the_same_data_and_no_control() {
        let text = json(&view()).unwrap();
        assert_eq!(acting(&text).iter().filter(|c| **c != '\n').count(), 0);
        assert!(text.contains(r#""id": "evil\u001b[2J\u001b]0;owned\u0007\u009b31m\u202etxt.exe""#));
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["clients"][0]["id"], HOSTILE);
    }
}
