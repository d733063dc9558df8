use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, StatusCode, request::Parts};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// One injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail before the inner service runs, with an error, as a refused
    /// connection does.
    Refuse,
    /// Run the inner service, then drop its response and fail with an
    /// error, as a connection reset after the work was done does.
    Reset,
    /// Wait this long before running the inner service.
    Delay(Duration),
    /// Respond with this status before the inner service runs, as a proxy
    /// or a failing middleware does.
    FailBefore(StatusCode),
    /// Run the inner service, then drop its response and respond with this
    /// status. The work is done, but the caller receives a failure.
    FailAfter(StatusCode),
}

impl Fault {
    /// Creates a [`Fault::FailBefore`].
    pub fn fail_before(status: StatusCode) -> Self {
        Self::FailBefore(status)
    }

    /// Creates a [`Fault::FailAfter`].
    pub fn fail_after(status: StatusCode) -> Self {
        Self::FailAfter(status)
    }
}

/// The error returned for [`Fault::Refuse`] and [`Fault::Reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultError {
    fault: Fault,
}

impl FaultError {
    pub(crate) fn new(fault: Fault) -> Self {
        Self { fault }
    }

    /// Returns the fault that produced this error.
    pub fn fault(&self) -> Fault {
        self.fault
    }
}

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fault {
            Fault::Reset => f.write_str("injected fault: connection reset after the handler ran"),
            _ => f.write_str("injected fault: connection refused"),
        }
    }
}

impl std::error::Error for FaultError {}

type Predicate = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;

/// Decides which requests fail and how.
///
/// Clones share their state: a sequence advances once per request across
/// all clones, and a seeded random plan draws from one generator.
#[derive(Clone)]
pub struct Faults {
    plan: Arc<Plan>,
    only: Option<Predicate>,
}

enum Plan {
    None,
    Sequence {
        faults: Vec<Option<Fault>>,
        next: AtomicU64,
    },
    Until {
        deadline: Instant,
        fault: Fault,
    },
    Random {
        rng: Box<Mutex<StdRng>>,
        choices: Vec<(Fault, f64)>,
    },
}

impl Faults {
    /// Creates a plan that injects nothing.
    pub fn none() -> Self {
        Self::from_plan(Plan::None)
    }

    /// Creates a plan that gives the n-th matching request the n-th entry
    /// of `faults` (`None` lets it through), and lets every request after
    /// the last entry through.
    pub fn sequence(faults: impl IntoIterator<Item = Option<Fault>>) -> Self {
        Self::from_plan(Plan::Sequence {
            faults: faults.into_iter().collect(),
            next: AtomicU64::new(0),
        })
    }

    /// Creates a plan that injects `fault` into every matching request for
    /// `duration` from now, then none.
    pub fn until(duration: Duration, fault: Fault) -> Self {
        Self::from_plan(Plan::Until {
            deadline: Instant::now() + duration,
            fault,
        })
    }

    /// Creates a random plan with a fixed seed, so that a failing test can
    /// be replayed. Add faults with [`Faults::with`].
    pub fn random(seed: u64) -> Self {
        Self::from_plan(Plan::Random {
            rng: Box::new(Mutex::new(StdRng::seed_from_u64(seed))),
            choices: Vec::new(),
        })
    }

    /// Adds `fault` with `probability` (clamped to 0..=1) to a random plan.
    /// The probabilities of one plan are drawn from one roll, so they add up:
    /// `with(a, 0.1).with(b, 0.2)` gives `a` to 10% and `b` to 20%.
    ///
    /// # Panics
    ///
    /// Panics if the plan was not made by [`Faults::random`], or was already
    /// cloned.
    pub fn with(mut self, fault: Fault, probability: f64) -> Self {
        let plan =
            Arc::get_mut(&mut self.plan).expect("a random plan is built before it is cloned");
        match plan {
            Plan::Random { choices, .. } => choices.push((fault, probability.clamp(0.0, 1.0))),
            _ => panic!("Faults::with applies only to a plan made by Faults::random"),
        }
        self
    }

    /// Restricts the plan to requests for which `predicate` is true; other
    /// requests always pass and do not advance a sequence.
    pub fn only(mut self, predicate: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.only = Some(Arc::new(predicate));
        self
    }

    /// Restricts the plan to requests with `method` whose path starts with
    /// `prefix`.
    pub fn only_path(self, method: Method, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.only(move |parts| parts.method == method && parts.uri.path().starts_with(&prefix))
    }

    /// Returns the fault for the request with `parts`, if any.
    pub fn decide(&self, parts: &Parts) -> Option<Fault> {
        if self.only.as_ref().is_some_and(|only| !only(parts)) {
            return None;
        }
        self.plan.decide()
    }

    fn from_plan(plan: Plan) -> Self {
        Self {
            plan: Arc::new(plan),
            only: None,
        }
    }
}

impl Plan {
    fn decide(&self) -> Option<Fault> {
        match self {
            Plan::None => None,
            Plan::Sequence { faults, next } => {
                let index = next.fetch_add(1, Ordering::Relaxed);
                usize::try_from(index)
                    .ok()
                    .and_then(|index| faults.get(index).copied().flatten())
            }
            Plan::Until { deadline, fault } => (Instant::now() < *deadline).then_some(*fault),
            Plan::Random { rng, choices } => {
                let roll: f64 = rng
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .random();
                pick(choices, roll)
            }
        }
    }
}

fn pick(choices: &[(Fault, f64)], roll: f64) -> Option<Fault> {
    let mut threshold = 0.0;
    for (fault, probability) in choices {
        threshold += probability;
        if roll < threshold {
            return Some(*fault);
        }
    }
    None
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plan = match &*self.plan {
            Plan::None => "none",
            Plan::Sequence { .. } => "sequence",
            Plan::Until { .. } => "until",
            Plan::Random { .. } => "random",
        };
        f.debug_struct("Faults")
            .field("plan", &plan)
            .field("filtered", &self.only.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, path: &str) -> Parts {
        http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn sequence_runs_out_then_passes() {
        let faults = Faults::sequence([Some(Fault::Refuse), None, Some(Fault::Reset)]);
        let request = parts(Method::POST, "/");

        let decided: Vec<_> = (0..4).map(|_| faults.decide(&request)).collect();

        assert_eq!(
            decided,
            [Some(Fault::Refuse), None, Some(Fault::Reset), None]
        );
    }

    #[test]
    fn filtered_requests_do_not_advance_sequence() {
        let faults = Faults::sequence([Some(Fault::Refuse)]).only_path(Method::POST, "/commands/");

        assert_eq!(faults.decide(&parts(Method::GET, "/stats")), None);
        assert_eq!(
            faults.decide(&parts(Method::POST, "/commands/a")),
            Some(Fault::Refuse)
        );
    }

    #[test]
    fn random_plan_hits_about_its_probability() {
        let faults = Faults::random(7).with(Fault::Refuse, 0.25);
        let request = parts(Method::POST, "/");

        let hits = (0..10_000)
            .filter(|_| faults.decide(&request).is_some())
            .count();

        assert!((2_200..2_800).contains(&hits), "{hits} hits out of 10000");
    }

    #[test]
    fn probabilities_of_one_plan_add_up() {
        let choices = [(Fault::Refuse, 0.1), (Fault::Reset, 0.2)];

        assert_eq!(pick(&choices, 0.05), Some(Fault::Refuse));
        assert_eq!(pick(&choices, 0.25), Some(Fault::Reset));
        assert_eq!(pick(&choices, 0.35), None);
    }
}
