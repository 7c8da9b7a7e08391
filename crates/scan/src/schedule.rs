//! Continuous batching as a plain state machine: which queries go through
//! which part of the table, and when a request is answered. No threads,
//! clocks or channels: a server feeds it requests and the engine's answers
//! and carries out what it says.
//!
//! An engine cuts a pass over the table into parts ([`Engine::parts`]);
//! the scan runs part after part, round and round. Whenever a part is done
//! the waiting queries join, oldest request first, up to the batch limit;
//! a query leaves once it has been through every part, its answer the XOR
//! of its answers from the parts. A lone request is answered in one round
//! of its own; under load every part holds as many queries as allowed; a
//! query that arrives during a round joins at the next part instead of
//! waiting for the round to end. A request holding more queries than there
//! is room for joins a few at a time and is answered whole, in order.
//!
//! [`Engine::parts`]: crate::Engine::parts

use std::collections::VecDeque;

use crate::Query;

/// The queue and the round of one engine. `R` is what the server keeps of
/// a request (where its answer goes, when it arrived).
pub struct Scheduler<R> {
    max_batch: usize,
    parts: usize,
    /// Bytes of one query's answer (its `choices` pages).
    answer_bytes: usize,
    /// Requests not yet answered whole, oldest first.
    queue: VecDeque<Waiting<R>>,
    round: Round,
}

/// A request in the queue.
struct Waiting<R> {
    request: R,
    /// Its queries that have not joined the round yet, taken from the front.
    queries: VecDeque<Query>,
    /// Its queries in the round now.
    in_round: usize,
    /// Answers of its queries that went all the way round, in order.
    answers: Vec<u8>,
    /// Whether one of its queries has joined the round.
    started: bool,
}

/// The queries going round the parts of the table, in the order they
/// joined. Each stays for every part once, so they leave in that order
/// too: the oldest request's first.
#[derive(Default)]
struct Round {
    /// The queries, contiguous for the engine (`make_contiguous`).
    queries: VecDeque<Query>,
    /// For each query: the parts it has still to go through, and the XOR of
    /// its answers from the parts so far.
    progress: VecDeque<(usize, Vec<u8>)>,
    /// The part the engine scans next.
    next_part: usize,
}

/// A request answered whole: its queries' answers, in order.
pub struct Answered<R> {
    /// What the server keeps of the request.
    pub request: R,
    /// `choices` pages per query, query after query.
    pub answers: Vec<u8>,
}

/// What a failed part leaves behind.
pub struct Failed<R> {
    /// Every request that had a query in the round: each fails whole.
    pub requests: Vec<R>,
    /// Queries that were in the round.
    pub in_round: usize,
    /// Queries of those requests that had not joined the round yet.
    pub unscanned: usize,
}

impl<R> Scheduler<R> {
    /// A scheduler for an engine of `parts` parts (at least 1) whose
    /// queries' answers are `answer_bytes` long, running at most
    /// `max_batch` queries (at least 1) through a part at once.
    pub fn new(max_batch: usize, parts: usize, answer_bytes: usize) -> Scheduler<R> {
        Scheduler {
            max_batch: max_batch.max(1),
            parts: parts.max(1),
            answer_bytes,
            queue: VecDeque::new(),
            round: Round::default(),
        }
    }

    /// Queues a request of `queries`, behind every request queued before.
    pub fn add(&mut self, request: R, queries: Vec<Query>) {
        let queries = queries.into();
        self.queue.push_back(Waiting { request, queries, in_round: 0, answers: Vec::new(), started: false });
    }

    /// Takes out the requests none of whose queries has joined the round and
    /// for which `gone` says that no one waits for them any more (their
    /// client left): they need no pass. Returns them with their query counts.
    pub fn drop_unstarted(&mut self, mut gone: impl FnMut(&R) -> bool) -> Vec<(R, usize)> {
        let mut dropped = Vec::new();
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for waiting in self.queue.drain(..) {
            if !waiting.started && gone(&waiting.request) {
                dropped.push((waiting.request, waiting.queries.len()));
            } else {
                kept.push_back(waiting);
            }
        }
        self.queue = kept;
        dropped
    }

    /// Whether no query is in the round and no request is half answered:
    /// the table may change now (an update, a swap) and every request is
    /// still answered from one table.
    pub fn at_rest(&self) -> bool {
        self.round.queries.is_empty() && !self.queue.front().is_some_and(|w| w.started)
    }

    /// Whether no request is queued or in the round.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Lets queued queries join the round while it has room, oldest request
    /// first; those of requests not yet started only if `new_requests`
    /// (while the table is about to change, only requests already started
    /// go on, so that each is answered from one table). `started` is told
    /// of each request whose first query joins now. Returns how many joined.
    pub fn join(&mut self, new_requests: bool, mut started: impl FnMut(&R)) -> usize {
        let mut joined = 0;
        for waiting in self.queue.iter_mut() {
            let room = self.max_batch - self.round.queries.len();
            if room == 0 || !(new_requests || waiting.started) {
                break;
            }
            let count = room.min(waiting.queries.len());
            if count == 0 {
                continue;
            }
            if !waiting.started {
                waiting.started = true;
                started(&waiting.request);
            }
            for query in waiting.queries.drain(..count) {
                self.round.queries.push_back(query);
                self.round.progress.push_back((self.parts, vec![0; self.answer_bytes]));
            }
            waiting.in_round += count;
            joined += count;
        }
        joined
    }

    /// The part to scan next and the queries to scan it for, if any query
    /// is in the round.
    pub fn next_part(&mut self) -> Option<(usize, &[Query])> {
        if self.round.queries.is_empty() {
            return None;
        }
        Some((self.round.next_part, self.round.queries.make_contiguous()))
    }

    /// Queries in the round now.
    pub fn in_round(&self) -> usize {
        self.round.queries.len()
    }

    /// Takes in the answers of the part [`Scheduler::next_part`] named, one
    /// `answer_bytes` slice per query of the round, and moves on to the next
    /// part. Returns the requests answered whole now, oldest first, and how
    /// many queries left the round.
    pub fn part_done(&mut self, answers: &[u8]) -> (Vec<Answered<R>>, usize) {
        debug_assert_eq!(answers.len(), self.round.queries.len() * self.answer_bytes);
        self.advance();
        let chunk = self.answer_bytes.max(1);
        for ((left, answer), part) in self.round.progress.iter_mut().zip(answers.chunks(chunk)) {
            answer.iter_mut().zip(part).for_each(|(a, p)| *a ^= p);
            *left -= 1;
        }
        let mut left_round = 0;
        while self.round.progress.front().is_some_and(|(left, _)| *left == 0) {
            self.round.queries.pop_front();
            let (_, answer) = self.round.progress.pop_front().expect("checked");
            // The oldest query in the round is the oldest started request's.
            let owner =
                self.queue.iter_mut().find(|w| w.in_round > 0).expect("a query in the round has a request");
            owner.answers.extend_from_slice(&answer);
            owner.in_round -= 1;
            left_round += 1;
        }
        let mut answered = Vec::new();
        while self.queue.front().is_some_and(|w| w.queries.is_empty() && w.in_round == 0) {
            let done = self.queue.pop_front().expect("checked");
            answered.push(Answered { request: done.request, answers: done.answers });
        }
        (answered, left_round)
    }

    /// The part [`Scheduler::next_part`] named failed: every request with
    /// a query in the round fails whole, the parts of it that later parts
    /// would have answered too, and the round is empty again.
    pub fn part_failed(&mut self) -> Failed<R> {
        self.advance();
        let in_round = self.round.queries.len();
        self.round.queries.clear();
        self.round.progress.clear();
        let started = self.queue.iter().take_while(|w| w.started).count();
        let failed: Vec<Waiting<R>> = self.queue.drain(..started).collect();
        let unscanned = failed.iter().map(|w| w.queries.len()).sum();
        Failed { requests: failed.into_iter().map(|w| w.request).collect(), in_round, unscanned }
    }

    /// Takes out every queued request (none may be in the round: see
    /// [`Scheduler::at_rest`]), with its queries not yet scanned: the table
    /// they were made for is gone.
    pub fn take_all(&mut self) -> Vec<(R, usize)> {
        debug_assert!(self.round.queries.is_empty());
        self.queue.drain(..).map(|w| (w.request, w.queries.len())).collect()
    }

    /// Starts over for an engine of `parts` parts and answers of
    /// `answer_bytes` bytes (after a swap to another table). The queue must
    /// be empty.
    pub fn reshape(&mut self, parts: usize, answer_bytes: usize) {
        debug_assert!(self.queue.is_empty() && self.round.queries.is_empty());
        self.parts = parts.max(1);
        self.answer_bytes = answer_bytes;
        self.round = Round::default();
    }

    fn advance(&mut self) {
        self.round.next_part = (self.round.next_part + 1) % self.parts;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scheduler of 3-byte answers, its requests named by numbers.
    fn scheduler(max_batch: usize, parts: usize) -> Scheduler<u32> {
        Scheduler::new(max_batch, parts, 3)
    }

    fn queries(count: usize) -> Vec<Query> {
        (0..count).map(|_| Query { keys: Vec::new() }).collect()
    }

    /// Answers a part: query i of the round gets [part, i, 1].
    fn answer(s: &mut Scheduler<u32>) -> (Vec<(u32, Vec<u8>)>, usize) {
        let (part, round) = s.next_part().expect("a query in the round");
        let answers: Vec<u8> = (0..round.len()).flat_map(|i| [part as u8, i as u8, 1]).collect();
        let (answered, left) = s.part_done(&answers);
        (answered.into_iter().map(|a| (a.request, a.answers)).collect(), left)
    }

    #[test]
    fn a_lone_request_is_answered_in_one_round_of_its_own() {
        let mut s = scheduler(8, 1);
        s.add(1, queries(2));
        let mut started = Vec::new();
        assert_eq!(s.join(true, |r| started.push(*r)), 2);
        assert_eq!(started, [1]);
        let (answered, left) = answer(&mut s);
        assert_eq!((answered, left), (vec![(1, vec![0, 0, 1, 0, 1, 1])], 2));
        assert!(s.is_empty() && s.at_rest() && s.next_part().is_none());
    }

    #[test]
    fn queued_requests_share_parts_and_a_large_one_is_split_in_order() {
        let mut s = scheduler(4, 1);
        for (id, count) in [(1, 3), (2, 3)] {
            s.add(id, queries(count));
        }
        assert_eq!(s.join(true, |_| {}), 4, "the batch limit");
        let (answered, _) = answer(&mut s);
        assert_eq!(answered.iter().map(|a| a.0).collect::<Vec<_>>(), [1], "request 2 is half answered");
        assert!(!s.at_rest());
        assert_eq!(s.join(true, |_| {}), 2);
        let (answered, _) = answer(&mut s);
        // Request 2's first query went in the first part (its 4th query), the rest in the second.
        assert_eq!(answered, vec![(2, vec![0, 3, 1, 0, 0, 1, 0, 1, 1])]);
    }

    #[test]
    fn queries_join_at_the_next_part_and_leave_after_every_part() {
        let mut s = scheduler(8, 3);
        s.add(1, queries(1));
        s.join(true, |_| {});
        assert_eq!(s.next_part().map(|(part, q)| (part, q.len())), Some((0, 1)));
        answer(&mut s);
        s.add(2, queries(1));
        s.join(true, |_| {});
        assert_eq!(s.next_part().map(|(part, q)| (part, q.len())), Some((1, 2)), "joins at part 1");
        assert!(answer(&mut s).0.is_empty());
        let (answered, left) = answer(&mut s);
        // Request 1 went through parts 0, 1 and 2: [0^1^2, 0^0^0, 1^1^1].
        assert_eq!((answered, left), (vec![(1, vec![3, 0, 1])], 1));
        assert_eq!(s.next_part().map(|(part, q)| (part, q.len())), Some((0, 1)), "round and round");
        let (answered, _) = answer(&mut s);
        // Request 2 went through parts 1 and 2 second in the round, then 0 alone:
        // [1^2^0, 1^1^0, 1^1^1].
        assert_eq!(answered, vec![(2, vec![3, 0, 1])]);
    }

    #[test]
    fn while_the_table_is_about_to_change_only_started_requests_go_on() {
        let mut s = scheduler(2, 1);
        s.add(1, queries(3));
        s.add(2, queries(1));
        assert_eq!(s.join(false, |_| {}), 0, "nothing has started");
        assert!(s.at_rest());
        assert_eq!(s.join(true, |_| {}), 2);
        answer(&mut s);
        assert!(!s.at_rest(), "request 1 is half answered");
        assert_eq!(s.join(false, |_| {}), 1, "request 1 goes on, request 2 waits");
        let (answered, _) = answer(&mut s);
        assert_eq!(answered.len(), 1);
        assert!(s.at_rest(), "the table may change before request 2 starts");
    }

    #[test]
    fn a_failed_part_fails_each_started_request_whole() {
        let mut s = scheduler(2, 2);
        s.add(1, queries(1));
        s.add(2, queries(3));
        s.add(3, queries(1));
        s.join(true, |_| {});
        let failed = s.part_failed();
        assert_eq!((failed.requests, failed.in_round, failed.unscanned), (vec![1, 2], 2, 2));
        assert!(s.at_rest(), "the round is empty again");
        s.join(true, |_| {});
        assert_eq!(s.next_part().map(|(part, q)| (part, q.len())), Some((1, 1)));
        answer(&mut s);
        let (answered, _) = answer(&mut s);
        assert_eq!(answered.iter().map(|a| a.0).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn requests_no_one_waits_for_are_dropped_unless_started() {
        let mut s = scheduler(1, 1);
        s.add(1, queries(2));
        s.add(2, queries(4));
        s.add(3, queries(1));
        s.join(true, |_| {});
        let dropped = s.drop_unstarted(|r| *r != 3);
        assert_eq!(dropped, vec![(2, 4)], "request 1 has started; 3 is waited for");
        answer(&mut s);
        s.join(true, |_| {});
        let (answered, _) = answer(&mut s);
        assert_eq!(answered.iter().map(|a| a.0).collect::<Vec<_>>(), [1]);
        assert_eq!(s.take_all(), vec![(3, 1)]);
        s.reshape(4, 5);
        s.add(4, queries(1));
        s.join(true, |_| {});
        assert_eq!(s.next_part().map(|(part, _)| part), Some(0));
    }
}
