//! A plain text table: left-aligned columns separated by two spaces, cells
//! optionally coloured (widths are measured on the plain text).

use console::Style;

/// One cell: its text and an optional style.
#[derive(Clone, Debug)]
pub struct Cell {
    text: String,
    style: Option<Style>,
}

impl Cell {
    /// A plain cell.
    pub fn plain(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            style: None,
        }
    }

    /// A cell drawn with `style`.
    pub fn styled(text: impl Into<String>, style: Style) -> Self {
        Cell {
            text: text.into(),
            style: Some(style),
        }
    }
}

/// A table with a header row.
#[derive(Clone, Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank).
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The table as lines, without trailing spaces.
    pub fn render(&self) -> Vec<String> {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().take(columns).enumerate() {
                widths[i] = widths[i].max(cell.text.chars().count());
            }
        }
        let header: Vec<Cell> = self.header.iter().map(Cell::plain).collect();
        std::iter::once(&header)
            .chain(&self.rows)
            .map(|row| {
                let mut line = String::new();
                for (i, width) in widths.iter().enumerate() {
                    let cell = row.get(i);
                    let text = cell.map(|c| c.text.as_str()).unwrap_or("");
                    if i > 0 {
                        line.push_str("  ");
                    }
                    match cell.and_then(|c| c.style.as_ref()) {
                        Some(style) => line.push_str(&style.apply_to(text).to_string()),
                        None => line.push_str(text),
                    }
                    if i + 1 < columns {
                        let pad = width - text.chars().count();
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
                line.trim_end().to_string()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let mut t = Table::new(&["ID", "STATUS", "SIZE"]);
        t.row(vec![
            Cell::plain("a"),
            Cell::plain("finished"),
            Cell::plain("1 B"),
        ]);
        t.row(vec![Cell::plain("longer-id"), Cell::plain("failed")]);
        assert_eq!(
            t.render(),
            vec![
                "ID         STATUS    SIZE",
                "a          finished  1 B",
                "longer-id  failed",
            ]
        );
    }
}
