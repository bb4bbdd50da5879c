//! Drawing a [`View`] as text, and the terminal it is drawn on: raw mode
//! and the alternate screen while `gateway top` runs, restored on `q`,
//! Ctrl-C, an error or a panic alike (the guard's `Drop`).
use std::{
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

/// The view as lines of text: the same for the screen and `--once`.
pub fn lines(view: &View, admin_url: &str) -> Vec<String> {
    let mut out = vec![format!(
        "gateway top — {admin_url} — every {:.1}s — q to quit",
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
            r.route,
            r.tier,
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
            c.id,
            c.tier,
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
            b["target"].as_str().unwrap_or("?"),
            b["reason"].as_str().unwrap_or("?"),
            b["seconds_left"].as_f64().unwrap_or(0.0),
            b["enforced_in"].as_str().unwrap_or("?"),
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
                    x.verdict, x.packets, x.per_sec
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
            u["name"].as_str().unwrap_or("?"),
            format!("{}/{}", u["usable"], u["servers"]),
            u["shed_tiers"]
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
