//! Quota rules, without I/O: how much of a tenant's monthly quota one server process may take
//! as a lease, and how many tokens a run must reserve before it starts.
//!
//! A lease is granted by one conditional update of the tenant's counter row, so it is only ever
//! granted from what the plan still allows (`limit - used - reserved`). While plenty is left, a
//! process takes a block (a sixteenth of what is left, capped) and admits runs from memory; as
//! the quota runs low the blocks shrink to exactly what the run needs, so the last runs of a
//! month are reserved one by one and nothing is stranded in another process's lease.

use serde::Serialize;

/// Which monthly quota a refusal names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaKind {
    MonthlyMessages,
    MonthlyTokens,
}

impl QuotaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MonthlyMessages => "monthly_messages",
            Self::MonthlyTokens => "monthly_tokens",
        }
    }
}

/// A pair of amounts: messages (runs) and tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amount {
    pub messages: i64,
    pub tokens: i64,
}

impl Amount {
    pub const ZERO: Self = Self {
        messages: 0,
        tokens: 0,
    };
    pub fn new(messages: i64, tokens: i64) -> Self {
        Self { messages, tokens }
    }
}

/// The counter row as the grant sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterState {
    pub used: Amount,
    pub reserved: Amount,
    pub limit: Amount,
}

/// Why a grant was refused: the quota, and its state then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exhausted {
    pub quota: QuotaKind,
    pub used: i64,
    pub reserved: i64,
    pub limit: i64,
}

/// The largest block one process takes at once.
pub const MAX_BLOCK: Amount = Amount {
    messages: 1_000,
    tokens: 4_000_000,
};

/// What to add to a process's lease so that it covers `need`: at least `need`, up to a
/// sixteenth of what is left (capped by [`MAX_BLOCK`]); refused if even `need` does not fit.
pub fn grant(state: CounterState, need: Amount) -> Result<Amount, Exhausted> {
    let one = |used: i64, reserved: i64, limit: i64, need: i64, cap: i64, quota| {
        let left = limit.saturating_sub(used).saturating_sub(reserved);
        if need > left {
            return Err(Exhausted {
                quota,
                used,
                reserved,
                limit,
            });
        }
        Ok(need.max((left / 16).min(cap)).min(left))
    };
    let s = state;
    let messages = one(
        s.used.messages,
        s.reserved.messages,
        s.limit.messages,
        need.messages,
        MAX_BLOCK.messages,
        QuotaKind::MonthlyMessages,
    )?;
    let tokens = one(
        s.used.tokens,
        s.reserved.tokens,
        s.limit.tokens,
        need.tokens,
        MAX_BLOCK.tokens,
        QuotaKind::MonthlyTokens,
    )?;
    Ok(Amount { messages, tokens })
}

/// Tokens to reserve for a run: an upper bound of the prompt (a token is at least one byte of
/// the serialized messages, which also covers the per-message overhead) plus the completion
/// bound for each choice.
pub fn reserve_tokens(prompt_bytes: usize, max_tokens: i64, choices: i64) -> i64 {
    i64::try_from(prompt_bytes)
        .unwrap_or(i64::MAX)
        .saturating_add(max_tokens.saturating_mul(choices))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(used: i64, reserved: i64, limit: i64) -> CounterState {
        CounterState {
            used: Amount::new(used, used * 100),
            reserved: Amount::new(reserved, reserved * 100),
            limit: Amount::new(limit, limit * 100),
        }
    }

    #[test]
    fn blocks_shrink_to_the_need_as_the_quota_runs_low() {
        let g = grant(state(0, 0, 100_000), Amount::new(1, 10)).unwrap();
        assert_eq!(g.messages, 1_000);
        let g = grant(state(0, 0, 50), Amount::new(1, 10)).unwrap();
        assert_eq!(g.messages, 3);
        let g = grant(state(40, 0, 50), Amount::new(1, 10)).unwrap();
        assert_eq!(g.messages, 1);
    }

    #[test]
    fn never_grants_beyond_the_limit() {
        for used in 0..=20 {
            for reserved in 0..=(20 - used) {
                match grant(state(used, reserved, 20), Amount::new(1, 1)) {
                    Ok(g) => assert!(used + reserved + g.messages <= 20),
                    Err(e) => {
                        assert_eq!(e.quota, QuotaKind::MonthlyMessages);
                        assert_eq!(used + reserved, 20);
                    }
                }
            }
        }
    }

    #[test]
    fn names_the_token_quota_when_tokens_run_out() {
        let s = CounterState {
            used: Amount::new(0, 990),
            reserved: Amount::ZERO,
            limit: Amount::new(100, 1_000),
        };
        let e = grant(s, Amount::new(1, 11)).unwrap_err();
        assert_eq!(e.quota, QuotaKind::MonthlyTokens);
        assert_eq!((e.used, e.limit), (990, 1_000));
        assert!(grant(s, Amount::new(1, 10)).is_ok());
    }

    #[test]
    fn a_zero_limit_refuses_everything() {
        assert!(grant(state(0, 0, 0), Amount::new(1, 0)).is_err());
    }
}
