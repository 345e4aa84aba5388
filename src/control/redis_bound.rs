//! The gateway's own deadline on every Redis call it waits for.
//!
//! fred's command timeout does not cover every state of its client: a command queued while the
//! router task reconnects can wait past it (aembke/fred.rs#381, #365). In a CI run a claim sent
//! as Redis came back went unanswered for over 5 s, and its link with it. A call that waits on
//! Redis (a claim, a stream append or read, a room change, a location lookup or write) goes
//! through [`Redis::call`], which answers within twice `--redis-timeout-ms` whatever the
//! client's state.

use std::future::Future;
use std::time::Duration;

use fred::prelude::*;

/// A Redis client and the longest a caller waits on one call through it.
#[derive(Clone)]
pub struct Redis {
    client: Client,
    bound: Duration,
}

impl Redis {
    /// `timeout` is `--redis-timeout-ms`, the client's own per-command deadline; a call is
    /// bounded at twice it, so that the client's deadline fires first whenever it works.
    pub fn new(client: Client, timeout: Duration) -> Redis {
        Redis {
            client,
            bound: timeout * 2,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `call`'s answer, or a timeout error once the bound has passed.
    pub async fn call<T>(&self, call: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        match tokio::time::timeout(self.bound, call).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("no answer from redis within {} ms", self.bound.as_millis()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(timeout_ms: u64) -> Redis {
        let client = Builder::default_centralized().build().expect("client");
        Redis::new(client, Duration::from_millis(timeout_ms))
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_answers_fails_at_twice_the_timeout() {
        let began = tokio::time::Instant::now();
        let answer = redis(500)
            .call(std::future::pending::<Result<(), Error>>())
            .await;
        let err = answer.expect_err("bounded");
        assert_eq!(*err.kind(), ErrorKind::Timeout);
        assert_eq!(began.elapsed(), Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_within_the_bound_passes_through() {
        let r = redis(500);
        let late = async {
            tokio::time::sleep(Duration::from_millis(999)).await;
            Ok::<_, Error>(7)
        };
        assert_eq!(r.call(late).await.expect("in time"), 7);
        let failed = async { Err::<(), _>(Error::new(ErrorKind::IO, "refused")) };
        assert_eq!(
            *r.call(failed).await.expect_err("passed").kind(),
            ErrorKind::IO
        );
    }
}
