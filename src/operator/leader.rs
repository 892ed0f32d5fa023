//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator
//! replicas never reconcile at once.
//!
//! Written by hand, as client-go's leaderelection does it: read the Lease,
//! and take or renew it with a replace that carries the read
//! `resourceVersion` — the apiserver refuses a stale one (409), so of two
//! candidates racing for an expired lease exactly one wins. The maintained
//! crate for kube 5 (kube-lease-manager) relies on server-side-apply field
//! ownership conflicts instead, which the test API double does not emulate;
//! optimistic concurrency works against both.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

/// One candidate for a lease.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("lease", &self.name)
            .field("identity", &self.identity)
            .finish()
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    /// A candidate `identity` for lease `name` (in `api`'s namespace),
    /// valid for `duration` after each renewal.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    /// One round: take the lease if it is free or expired, renew it if
    /// held. True when this candidate holds it afterwards.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let secs = i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let current = match self.api.get_opt(&self.name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_duration_seconds: Some(secs),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(e) if is_conflict(&e) => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        let expired = match (spec.renew_time.as_ref(), spec.lease_duration_seconds) {
            (Some(renewed), Some(d)) => renewed.0 + SignedDuration::from_secs(i64::from(d)) < now,
            _ => true,
        };
        if !mine && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let mut next = current.clone();
        let s = next.spec.get_or_insert_with(LeaseSpec::default);
        s.holder_identity = Some(self.identity.clone());
        s.renew_time = Some(MicroTime(now));
        s.lease_duration_seconds = Some(secs);
        if !mine {
            s.acquire_time = Some(MicroTime(now));
            s.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        // `next` carries the resourceVersion we read: a concurrent winner makes this 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up if held, so a successor need not wait for expiry.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Campaigns until `stop` turns true: publishes leadership on `tx`,
    /// renews every third of the lease duration, releases on the way out.
    /// A failed renewal counts as lost leadership (never two leaders).
    pub async fn run(self, tx: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let period = (self.duration / 3).max(Duration::from_millis(100));
        loop {
            let leading = match self.try_acquire_or_renew(Timestamp::now()).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "leader election round failed");
                    false
                }
            };
            tx.send_if_modified(|held| {
                let changed = *held != leading;
                *held = leading;
                changed
            });
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let _ = tx.send(false);
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "could not release the lease");
        }
    }
}
