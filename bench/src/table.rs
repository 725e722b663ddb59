//! The result tables every benchmark prints: Markdown pipe tables with
//! aligned columns, readable in a terminal and pasteable into
//! `docs/benchmarks.md`.

/// One result table: a title, a header, rows, and notes under it.
#[derive(Debug)]
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    /// An empty table with `columns`; the first is left-aligned, the others
    /// right-aligned (numbers).
    pub fn new(title: impl Into<String>, columns: &[&str]) -> Self {
        Table {
            title: title.into(),
            header: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Appends a row; missing cells print empty.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Appends a note printed under the table.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The table as Markdown.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::from("|");
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = width - cell.chars().count();
                if i == 0 {
                    out.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
                } else {
                    out.push_str(&format!(" {}{cell} |", " ".repeat(pad)));
                }
            }
            out.push('\n');
            out
        };
        let mut out = format!("### {}\n\n", self.title);
        out.push_str(&line(&self.header));
        out.push('|');
        for (i, width) in widths.iter().enumerate() {
            if i == 0 {
                out.push_str(&format!(":{}|", "-".repeat(width + 1)));
            } else {
                out.push_str(&format!("{}:|", "-".repeat(width + 1)));
            }
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                out.push_str(&format!("- {note}\n"));
            }
        }
        out
    }

    /// Prints the table to stdout, followed by a blank line.
    pub fn print(&self) {
        println!("{}", self.render());
    }
}

/// `PASS` or `FAIL`.
pub fn verdict(ok: bool) -> String {
    if ok { "PASS" } else { "FAIL" }.to_string()
}

/// `x` with `digits` decimals.
pub fn num(x: f64, digits: usize) -> String {
    format!("{x:.digits$}")
}

/// A ratio as a percentage, e.g. `93.4%`.
pub fn pct(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_markdown() {
        let mut t = Table::new("T", &["case", "MiB/s"]);
        t.row(vec!["raw".into(), "1234.5".into()]);
        t.row(vec!["pipeline".into(), "9.0".into()]);
        t.note("median of 3");
        let text = t.render();
        assert_eq!(
            text,
            "### T\n\n\
             | case     |  MiB/s |\n\
             |:---------|-------:|\n\
             | raw      | 1234.5 |\n\
             | pipeline |    9.0 |\n\
             \n- median of 3\n"
        );
    }
}
