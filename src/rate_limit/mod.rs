//! Rate limiting: which tier a caller falls in, who the consumer is, and whether its limits
//! admit one more request.

mod gcra;
mod local;
mod redis;
mod table;
pub mod usage;

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use prometheus::IntCounter;

use crate::authenticate::{Authenticator, ClaimPath, ClaimSlot, Principal, PrincipalKind};
use crate::config::{
    CallerKind, ConsumerConf, FailMode, Invalid, KeyPath, LimitBackend, RateLimitConf,
    RateLimitHeaders, RedisConf, TierConf,
};
use crate::metrics;
pub use gcra::Limit;
use local::LocalStore;
use redis::RedisStore;

/// A route's `limit_group`, as the tiers' `group_limits` refer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(usize);

/// The `limit_group` names of a config's routes.
#[derive(Debug, Default)]
pub struct Groups {
    names: Vec<Box<str>>,
}

impl Groups {
    /// The group named `name` (`at`: the route's `limit_group`), added when it is new.
    pub fn add(&mut self, name: &str, at: &KeyPath) -> Result<GroupId, Invalid> {
        if !valid_name(name) {
            return Err(Invalid::new(at.clone(), NAME_RULE));
        }
        Ok(GroupId(
            match self.names.iter().position(|n| **n == *name) {
                Some(i) => i,
                None => {
                    self.names.push(name.into());
                    self.names.len() - 1
                }
            },
        ))
    }

    pub fn find(&self, name: &str) -> Option<GroupId> {
        self.names.iter().position(|n| **n == *name).map(GroupId)
    }
}

/// Who is calling: what rate limiting needs to know about a request.
pub struct Caller<'a> {
    /// `None` on public routes.
    pub principal: Option<&'a Principal>,
    pub ip: IpAddr,
}

/// The consumer a tier counts requests against.
#[derive(Debug, Clone, Copy)]
enum Consumer {
    Subject,
    ClientId,
    ClientIp,
    Claim(ClaimSlot),
}

/// The limits that apply to one request of a tier: its own, plus a group's.
#[derive(Debug)]
struct LimitSet {
    limits: Vec<Limit>,
    /// Per limit: `*` for the tier's own, the group name for a group's. Part of the key.
    scopes: Vec<Box<str>>,
    /// Per limit: its name in `RateLimit-Policy`.
    names: Vec<String>,
    policy: HeaderValue,
}

#[derive(Debug)]
struct Tier {
    name: Arc<str>,
    callers: CallerKind,
    issuers: Option<Vec<Box<str>>>,
    client_ids: Option<Vec<Box<str>>>,
    claim: Option<(ClaimSlot, Vec<Box<str>>)>,
    consumer: Consumer,
    own: LimitSet,
    groups: Vec<(GroupId, LimitSet)>,
    backend: LimitBackend,
    on_redis_error: FailMode,
    /// Decision counters, looked up once rather than per request.
    allowed: IntCounter,
    limited: IntCounter,
    unavailable: IntCounter,
    /// Its heaviest consumers, when `top_consumers` is on.
    usage: Option<Arc<usage::Usage>>,
}

impl Tier {
    fn matches(&self, caller: &Caller<'_>) -> bool {
        let p = match (self.callers, caller.principal) {
            (CallerKind::Anonymous, None) => return true,
            (CallerKind::Anonymous, Some(_)) | (_, None) => return false,
            (CallerKind::Users, Some(p)) if p.kind == PrincipalKind::User => p,
            (CallerKind::Services, Some(p)) if p.kind == PrincipalKind::Service => p,
            _ => return false,
        };
        let listed = |list: &Option<Vec<Box<str>>>, value: Option<&str>| match list {
            None => true,
            Some(list) => value.is_some_and(|v| list.iter().any(|x| **x == *v)),
        };
        listed(&self.issuers, Some(&p.issuer))
            && listed(&self.client_ids, p.client_id.as_deref())
            && match &self.claim {
                None => true,
                Some((slot, values)) => {
                    let value = p.claim(*slot);
                    value.is_some_and(|v| values.iter().any(|x| **x == *v))
                }
            }
    }

    /// The consumer's id. A token that lacks the configured claim is counted by its subject
    /// rather than not at all.
    fn consumer<'a>(&self, caller: &'a Caller<'_>) -> Cow<'a, str> {
        let Some(p) = caller.principal else {
            return Cow::Owned(caller.ip.to_string());
        };
        let value = match self.consumer {
            Consumer::Subject => None,
            Consumer::ClientIp => return Cow::Owned(caller.ip.to_string()),
            Consumer::ClientId => p.client_id.as_deref(),
            Consumer::Claim(slot) => p.claim(slot),
        };
        match value {
            Some(v) => Cow::Borrowed(v),
            None if matches!(self.consumer, Consumer::Subject) => Cow::Borrowed(&p.subject),
            None => Cow::Owned(format!("sub:{}", p.subject)),
        }
    }

    fn limit_set(&self, group: Option<GroupId>) -> &LimitSet {
        group
            .and_then(|g| self.groups.iter().find(|(id, _)| *id == g))
            .map_or(&self.own, |(_, set)| set)
    }
}

/// The rate-limit outcome of one request.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    tier: usize,
    group: Option<GroupId>,
    outcome: gcra::Combined,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.outcome.allowed
    }

    /// Seconds until the request would be admitted, as `Retry-After` says it.
    pub fn retry_after_secs(&self) -> u64 {
        self.outcome.check.retry_after.div_ceil(1_000_000).max(1)
    }
}

/// A limit on something other than requests to routes (see [`RateLimiter::quota`]).
#[derive(Debug)]
pub struct Quota {
    name: Arc<str>,
    set: LimitSet,
    backend: LimitBackend,
    on_redis_error: FailMode,
}

/// What counting one use of a [`Quota`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub allowed: bool,
    /// When refused: seconds until one more use would be allowed.
    pub retry_after_secs: u64,
}

/// The limit store did not answer and the tier fails closed: a 503.
#[derive(Debug, Clone, Copy)]
pub struct StoreUnavailable {
    pub retry_after_secs: u64,
}

/// A config's tiers, with the stores they count in.
pub struct RateLimiter {
    tiers: Vec<Tier>,
    headers: RateLimitHeaders,
    top_consumers: usize,
    local: Arc<LocalStore>,
    redis: Option<Arc<RedisStore>>,
}

/// Microseconds on the process clock, never 0 (which means "no state" to the stores).
fn now_us() -> u64 {
    crate::clock::process_micros().saturating_add(1)
}

impl RateLimiter {
    /// Compiles `[rate_limit]` except its tiers; add them with [`RateLimiter::add_tier`].
    /// Stores of `previous` are kept when their settings are unchanged, so a reload hands out
    /// no fresh quotas and keeps its Redis connection.
    /// `at` is where `[rate_limit]` is.
    pub fn new(
        conf: &RateLimitConf,
        at: &KeyPath,
        previous: Option<&RateLimiter>,
    ) -> Result<Self, Invalid> {
        if conf.local_max_keys == 0 {
            return Err(Invalid::new(at.key("local_max_keys"), "must be at least 1"));
        }
        let local = previous
            .map(|p| p.local.clone())
            .filter(|l| l.max_keys() == conf.local_max_keys)
            .unwrap_or_else(|| Arc::new(LocalStore::new(conf.local_max_keys)));
        let redis = match &conf.redis {
            None => None,
            Some(rc) => Some(redis_store(
                rc,
                &at.key("redis"),
                conf.local_max_keys,
                previous,
            )?),
        };
        Ok(Self {
            tiers: Vec::new(),
            headers: conf.headers,
            top_consumers: conf.top_consumers,
            local,
            redis,
        })
    }

    /// Adds the tier `[[rate_limit.tiers]]` found at `at`.
    pub fn add_tier(
        &mut self,
        conf: &TierConf,
        at: &KeyPath,
        groups: &Groups,
        authenticator: &mut Authenticator,
    ) -> Result<(), Invalid> {
        let field = |name: &str, message: String| Invalid::new(at.key(name), message);
        let name = conf.name.as_str();
        if !valid_name(name) {
            return Err(field("name", NAME_RULE.into()));
        }
        if self.tiers.iter().any(|t| &*t.name == name) {
            return Err(field("name", format!("another tier is named {name:?}")));
        }
        if conf.backend == LimitBackend::Redis && self.redis.is_none() {
            return Err(field(
                "backend",
                "backend = \"redis\" needs a [rate_limit.redis] table".into(),
            ));
        }
        let anonymous = conf.callers == CallerKind::Anonymous;
        if anonymous
            && (conf.issuers.is_some() || conf.client_ids.is_some() || conf.claim.is_some())
        {
            return Err(field(
                "callers",
                "anonymous callers have no token to match issuers, client_ids or claim on".into(),
            ));
        }
        let consumer = match &conf.consumer {
            None => match conf.callers {
                CallerKind::Anonymous => Consumer::ClientIp,
                CallerKind::Users => Consumer::Subject,
                CallerKind::Services => Consumer::ClientId,
            },
            Some(ConsumerConf::ClientIp) => Consumer::ClientIp,
            Some(_) if anonymous => {
                return Err(field(
                    "consumer",
                    "anonymous callers can only be told apart by client_ip".into(),
                ))
            }
            Some(ConsumerConf::Subject) => Consumer::Subject,
            Some(ConsumerConf::ClientId) => Consumer::ClientId,
            Some(ConsumerConf::Claim(path)) => Consumer::Claim(
                authenticator.claim_slot(ClaimPath::parse(path).map_err(|e| field("consumer", e))?),
            ),
        };
        let issuer_names = match &conf.issuers {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|n| match authenticator.find(n) {
                        Some(_) => Ok(n.as_str().into()),
                        None => Err(field("issuers", format!("no issuer named {n:?}"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let claim = match &conf.claim {
            None => None,
            Some(c) => {
                let path = ClaimPath::parse(&c.name).map_err(|e| field("claim", e))?;
                if c.values.is_empty() {
                    return Err(field("claim", "values must list at least one value".into()));
                }
                let values = c.values.iter().map(|v| v.as_str().into()).collect();
                Some((authenticator.claim_slot(path), values))
            }
        };
        if conf.limits.is_empty() && conf.group_limits.is_empty() {
            return Err(field("limits", "a tier needs at least one limit".into()));
        }
        let own_limits = parse_limits(&conf.limits).map_err(|e| field("limits", e))?;
        let own = limit_set(name, &own_limits, None, &[]).map_err(|(f, m)| field(f, m))?;
        let mut group_sets = Vec::new();
        for (group, limits) in &conf.group_limits {
            let id = groups.find(group).ok_or_else(|| {
                field(
                    "group_limits",
                    format!("no route has limit_group = {group:?}"),
                )
            })?;
            let extra = parse_limits(limits).map_err(|e| field("group_limits", e))?;
            let set =
                limit_set(name, &own_limits, Some(group), &extra).map_err(|(f, m)| field(f, m))?;
            group_sets.push((id, set));
        }
        self.tiers.push(Tier {
            name: name.into(),
            callers: conf.callers,
            issuers: issuer_names,
            client_ids: conf
                .client_ids
                .as_ref()
                .map(|l| l.iter().map(|s| s.as_str().into()).collect()),
            claim,
            consumer,
            own,
            groups: group_sets,
            backend: conf.backend,
            on_redis_error: conf.on_redis_error,
            allowed: metrics::rate_limit_decisions(name, "allowed"),
            limited: metrics::rate_limit_decisions(name, "limited"),
            unavailable: metrics::rate_limit_decisions(name, "unavailable"),
            usage: usage::for_tier(name, self.top_consumers),
        });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// Counts one request of `caller` on a route of `group`. `Ok(None)`: no tier matches, the
    /// request is not limited.
    pub async fn check(
        &self,
        caller: &Caller<'_>,
        group: Option<GroupId>,
    ) -> Result<Option<Verdict>, StoreUnavailable> {
        let Some((index, tier)) = self
            .tiers
            .iter()
            .enumerate()
            .find(|(_, t)| t.matches(caller))
        else {
            return Ok(None);
        };
        let set = tier.limit_set(group);
        if set.limits.is_empty() {
            return Ok(None);
        }
        let consumer = tier.consumer(caller);
        let counted = self
            .count(
                &tier.name,
                set,
                &consumer,
                group,
                tier.backend,
                tier.on_redis_error,
            )
            .await;
        if counted.is_err() {
            tier.unavailable.inc();
        }
        let outcome = counted?;
        let Some(outcome) = outcome else {
            return Ok(None);
        };
        if outcome.allowed {
            tier.allowed.inc();
        } else {
            tier.limited.inc();
        }
        if let Some(usage) = &tier.usage {
            usage.requests.observe(&consumer);
            if !outcome.allowed {
                usage.limited.observe(&consumer);
            }
        }
        Ok(Some(Verdict {
            tier: index,
            group,
            outcome,
        }))
    }

    /// Counts one request of `consumer` against `set`, in the store `backend` names. `name`
    /// (a tier's, or a quota's) keeps its counters apart from everyone else's.
    async fn count(
        &self,
        name: &str,
        set: &LimitSet,
        consumer: &str,
        group: Option<GroupId>,
        backend: LimitBackend,
        on_redis_error: FailMode,
    ) -> Result<Option<gcra::Combined>, StoreUnavailable> {
        let hasher = self.local.hasher();
        let shard_key = hasher.hash_one((name, consumer));
        let keys: Vec<u64> = set
            .scopes
            .iter()
            .zip(&set.limits)
            .map(|(scope, l)| hasher.hash_one((shard_key, scope, l.period)))
            .collect();
        let now = now_us();
        let local = || self.local.decide(shard_key, &keys, &set.limits, now);
        let (Some(redis), LimitBackend::Redis) = (&self.redis, backend) else {
            return Ok(local());
        };
        let prefix = &redis.conf().key_prefix;
        let redis_keys: Vec<String> = set
            .scopes
            .iter()
            .zip(&set.limits)
            .map(|(scope, l)| format!("{prefix}{{{name}:{consumer}}}:{scope}:{}", l.period))
            .collect();
        let denial_key = hasher.hash_one((shard_key, group));
        // Boxed: the Redis call's state is large, and local tiers should not carry it.
        let decided = Box::pin(redis.decide(denial_key, &redis_keys, &set.limits, now));
        match decided.await {
            Ok(outcome) => Ok(Some(outcome)),
            Err(_) => match on_redis_error {
                FailMode::FailOpen => {
                    metrics::rate_limit_fallbacks("fail_open").inc();
                    Ok(local())
                }
                FailMode::FailClosed => {
                    metrics::rate_limit_fallbacks("fail_closed").inc();
                    let retry = redis.conf().retry_interval.as_secs().max(1);
                    Err(StoreUnavailable {
                        retry_after_secs: retry,
                    })
                }
            },
        }
    }

    /// A quota on something other than requests to routes, counted in the same stores as the
    /// tiers: `limits` as a tier's, `at` where they are configured. It counts under `@name`,
    /// and no tier name can hold an `@`, so a quota and a tier never share a counter.
    pub fn quota(
        &self,
        name: &str,
        limits: &[String],
        backend: LimitBackend,
        on_redis_error: FailMode,
        at: &KeyPath,
    ) -> Result<Quota, Invalid> {
        if backend == LimitBackend::Redis && self.redis.is_none() {
            return Err(Invalid::new(
                at.key("backend"),
                "backend = \"redis\" needs a [rate_limit.redis] table",
            ));
        }
        let parsed = parse_limits(limits).map_err(|e| Invalid::new(at.clone(), e))?;
        let set =
            limit_set(name, &parsed, None, &[]).map_err(|(_, m)| Invalid::new(at.clone(), m))?;
        Ok(Quota {
            name: format!("@{name}").into(),
            set,
            backend,
            on_redis_error,
        })
    }

    /// Counts one use of `quota` by `consumer`.
    pub async fn take(&self, quota: &Quota, consumer: &str) -> Result<Taken, StoreUnavailable> {
        let set = &quota.set;
        let counted = self
            .count(
                &quota.name,
                set,
                consumer,
                None,
                quota.backend,
                quota.on_redis_error,
            )
            .await?;
        Ok(match counted {
            None => Taken {
                allowed: true,
                retry_after_secs: 0,
            },
            Some(c) => Taken {
                allowed: c.allowed,
                retry_after_secs: c.check.retry_after.div_ceil(1_000_000).max(1),
            },
        })
    }

    /// Which tier and consumer a caller counts against on a route of `group`, without
    /// counting anything (for `explain`): (tier, consumer, limits as `N/period`).
    pub fn classify(
        &self,
        caller: &Caller<'_>,
        group: Option<GroupId>,
    ) -> Option<(&str, String, Vec<String>)> {
        let tier = self.tiers.iter().find(|t| t.matches(caller))?;
        let set = tier.limit_set(group);
        let limits = set
            .limits
            .iter()
            .map(|l| {
                let period = std::time::Duration::from_micros(l.period);
                format!("{} per {}", l.count, humantime::format_duration(period))
            })
            .collect();
        Some((&tier.name, tier.consumer(caller).into_owned(), limits))
    }

    pub fn tier_name(&self, verdict: &Verdict) -> &str {
        self.tiers.get(verdict.tier).map_or("", |t| &t.name)
    }

    /// Headers telling the client its quota, on every response of a limited tier; with
    /// `Retry-After` when the request was refused.
    pub fn headers(&self, verdict: &Verdict) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(4);
        if !verdict.allowed() {
            out.push((RETRY_AFTER, HeaderValue::from(verdict.retry_after_secs())));
        }
        let Some(tier) = self.tiers.get(verdict.tier) else {
            return out;
        };
        let set = tier.limit_set(verdict.group);
        let Some(limit) = set.limits.get(verdict.outcome.binding) else {
            return out;
        };
        let check = &verdict.outcome.check;
        let reset = check.reset.div_ceil(1_000_000);
        if matches!(
            self.headers,
            RateLimitHeaders::Ietf | RateLimitHeaders::Both
        ) {
            out.push((RATELIMIT_POLICY, set.policy.clone()));
            let name = &set.names[verdict.outcome.binding];
            // Written out by hand: `format!` costs more than the rest of this answer.
            let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
            let (r, t) = (r.format(check.remaining), t.format(reset));
            let mut value = String::with_capacity(name.len() + r.len() + t.len() + 8);
            for part in ["\"", name, "\";r=", r, ";t=", t] {
                value.push_str(part);
            }
            if let Ok(v) = HeaderValue::try_from(value) {
                out.push((RATELIMIT, v));
            }
        }
        if matches!(
            self.headers,
            RateLimitHeaders::XRatelimit | RateLimitHeaders::Both
        ) {
            out.push((X_LIMIT, HeaderValue::from(limit.count)));
            out.push((X_REMAINING, HeaderValue::from(check.remaining)));
            out.push((X_RESET, HeaderValue::from(reset)));
        }
        out
    }
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

fn redis_store(
    conf: &RedisConf,
    at: &KeyPath,
    max_keys: usize,
    previous: Option<&RateLimiter>,
) -> Result<Arc<RedisStore>, Invalid> {
    if conf.timeout.is_zero() {
        return Err(Invalid::new(at.key("timeout"), "must be above zero"));
    }
    let kept = previous
        .and_then(|p| p.redis.clone())
        .filter(|r| r.conf() == conf);
    match kept {
        Some(r) => Ok(r),
        None => RedisStore::new(conf, max_keys)
            .map(Arc::new)
            .map_err(|e| Invalid::new(at.key("url"), e)),
    }
}

/// What tier and group names may contain: they end up in headers, metrics and Redis keys.
const NAME_RULE: &str = "use letters, digits, '-', '_' and '.' only";

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn parse_limits(list: &[String]) -> Result<Vec<Limit>, String> {
    list.iter().map(|s| Limit::parse(s)).collect()
}

fn limit_set(
    tier: &str,
    own: &[Limit],
    group: Option<&str>,
    extra: &[Limit],
) -> Result<LimitSet, (&'static str, String)> {
    let mut set = LimitSet {
        limits: Vec::new(),
        scopes: Vec::new(),
        names: Vec::new(),
        policy: HeaderValue::from_static(""),
    };
    let mut push = |scope: Option<&str>, l: &Limit| {
        set.limits.push(*l);
        set.scopes.push(scope.unwrap_or("*").into());
        set.names.push(match scope {
            None => format!("{tier}.{}s", l.window_secs()),
            Some(g) => format!("{tier}.{g}.{}s", l.window_secs()),
        });
    };
    own.iter().for_each(|l| push(None, l));
    extra.iter().for_each(|l| push(group, l));
    let mut seen = std::collections::HashSet::new();
    if !set.names.iter().all(|n| seen.insert(n)) {
        let key = if group.is_some() {
            "group_limits"
        } else {
            "limits"
        };
        return Err((
            key,
            "two limits of the same period; keep the stricter one".into(),
        ));
    }
    let policy: Vec<String> = set
        .names
        .iter()
        .zip(&set.limits)
        .map(|(n, l)| format!("\"{n}\";q={};w={}", l.count, l.window_secs()))
        .collect();
    // Names were checked against NAME_RULE, so the value is always valid.
    set.policy =
        HeaderValue::try_from(policy.join(", ")).map_err(|_| ("name", NAME_RULE.into()))?;
    Ok(set)
}
