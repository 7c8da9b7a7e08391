//! The oracle: evaluates every key at every page, one point at a time, and
//! XORs the selected pages. Slow and plainly right.

use std::sync::Arc;

use morphogen_table::{Layout, PageWrite, Table};

use crate::{Answers, Engine, EngineKind, Error, Query, time_host_read, validate, write_own_table, xor_into};

/// Answers queries by point evaluation, page by page, query by query.
pub struct ReferenceEngine {
    table: Arc<Table>,
}

impl ReferenceEngine {
    /// An engine over `table`.
    pub fn new(table: Arc<Table>) -> ReferenceEngine {
        ReferenceEngine { table }
    }
}

impl Engine for ReferenceEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Reference
    }

    fn device(&self) -> String {
        "one CPU thread".to_string()
    }

    fn layout(&self) -> &Layout {
        self.table.layout()
    }

    fn table(&self) -> Option<&Table> {
        Some(&self.table)
    }

    fn write_pages(&mut self, writes: &[PageWrite]) -> Result<(), Error> {
        write_own_table(&mut self.table, writes)
    }

    fn plain_read_seconds(&mut self) -> Result<f64, Error> {
        Ok(time_host_read(self.table.pages(), self.table.layout().page_size() as usize))
    }

    fn pass(&mut self, queries: &[Query]) -> Result<Answers, Error> {
        let layout = self.table.layout();
        validate(layout, queries)?;
        let mut answers = Answers::zeroed(layout, queries.len());
        for (q, query) in queries.iter().enumerate() {
            for (sub_table, key) in query.keys.iter().enumerate() {
                let answer = answers.page_mut(q, sub_table);
                for page in 0..layout.pages_per_table() {
                    // validate() checked the domain, so every page is a valid point.
                    if key.eval_point(page).map_err(|e| Error::Fault(e.to_string()))? {
                        xor_into(answer, self.table.page(sub_table as u8, page));
                    }
                }
            }
        }
        Ok(answers)
    }
}
