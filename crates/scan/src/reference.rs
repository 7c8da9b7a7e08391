//! The oracle: evaluates every key at every page, one point at a time, and
//! XORs the selected pages. Slow and plainly right.

use morphogen_table::{Layout, PageWrite, Table};

use crate::{
    Answers, EngineKind, Error, Profile, Query, Scan, WritePages, time_host_read, validate, write_table,
    xor_into,
};

/// Answers queries by point evaluation, page by page, query by query.
pub struct ReferenceEngine {
    table: Table,
}

impl ReferenceEngine {
    /// An engine over `table`, which it owns from now on.
    pub fn new(table: Table) -> ReferenceEngine {
        ReferenceEngine { table }
    }
}

/// The reference engine's pass over a table it does not own: the oracle
/// that checks another engine's answers from that engine's own table.
pub fn reference_pass(table: &Table, queries: &[Query]) -> Result<Answers, Error> {
    let layout = table.layout();
    validate(layout, queries)?;
    let mut answers = Answers::zeroed(layout, queries.len());
    for (q, query) in queries.iter().enumerate() {
        for (sub_table, key) in query.keys.iter().enumerate() {
            let answer = answers.page_mut(q, sub_table);
            for page in 0..layout.pages_per_table() {
                // validate() checked the domain, so every page is a valid point.
                if key.eval_point(page).map_err(|e| Error::Fault(e.to_string()))? {
                    xor_into(answer, table.page(sub_table as u8, page));
                }
            }
        }
    }
    Ok(answers)
}

impl Scan for ReferenceEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Reference
    }

    fn device(&self) -> String {
        "one CPU thread".to_string()
    }

    fn layout(&self) -> &Layout {
        self.table.layout()
    }

    fn pass(&mut self, queries: &[Query]) -> Result<Answers, Error> {
        reference_pass(&self.table, queries)
    }
}

impl WritePages for ReferenceEngine {
    fn table(&self) -> Option<&Table> {
        Some(&self.table)
    }

    fn write_pages(&mut self, writes: &[PageWrite]) -> Result<(), Error> {
        write_table(&mut self.table, writes)
    }
}

impl Profile for ReferenceEngine {
    fn plain_read_seconds(&mut self) -> Result<f64, Error> {
        Ok(time_host_read(self.table.pages(), self.table.layout().page_size() as usize))
    }
}
