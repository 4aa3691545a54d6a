//! The admin service (gRPC; `http.rs` serves the same methods as JSON).
//! Store errors become gRPC statuses in one place (`status`).

use std::sync::Arc;

use stoa_proto::{
    keys::NewKey,
    pb::{self, Kind, admin_server::Admin, resource::Resource as R},
};
use tonic::{Request, Response, Status};

use crate::{
    auth,
    discover::Discoverer,
    store::{Actor, Op, Store, StoreError},
};

pub struct AdminService {
    pub store: Arc<Store>,
    pub replica: String,
    pub discoverer: Arc<Discoverer>,
}

/// The one mapping from store errors to gRPC statuses.
pub fn status(e: StoreError) -> Status {
    match e {
        StoreError::Invalid(f) => Status::invalid_argument(f.to_string()),
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::AlreadyExists(m) => Status::already_exists(m),
        StoreError::FailedPrecondition(m) => Status::failed_precondition(m),
        StoreError::Db(e) => Status::unavailable(format!("database: {e}")),
        e @ (StoreError::Migrate(_) | StoreError::Corrupt(..)) => Status::internal(e.to_string()),
    }
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, Status> {
    v.ok_or_else(|| Status::invalid_argument(format!("{field}: required")))
}

/// Kinds that have their own way in.
fn writable(r: &pb::Resource) -> Result<(), Status> {
    match r.kind() {
        Kind::ApiKey => Err(Status::invalid_argument(
            "resource.api_key: keys are made by CreateApiKey (the plain key is shown once)",
        )),
        Kind::Tool => Err(Status::invalid_argument(
            "resource.tool: tools are discovered from their upstream (DiscoverTools)",
        )),
        Kind::SessionKeys => Err(Status::invalid_argument(
            "resource.session_keys: made by the control plane; use RotateSessionKeys",
        )),
        Kind::Unspecified => Err(Status::invalid_argument("resource: no resource given")),
        _ => Ok(()),
    }
}

/// What admin clients may write but leave out.
fn defaults(mut r: pb::Resource) -> pb::Resource {
    if let Some(R::Subscription(s)) = &mut r.resource
        && s.tools.is_empty()
    {
        s.tools.push("*".into());
    }
    r
}

impl AdminService {
    async fn admin<T>(&self, req: &Request<T>) -> Result<Actor, Status> {
        auth::caller(&self.store, req, auth::ADMIN).await
    }

    async fn one(
        &self,
        actor: &Actor,
        action: &str,
        op: Op,
    ) -> Result<pb::ResourceResponse, Status> {
        let (revision, mut out) = self
            .store
            .apply(actor, action, vec![op])
            .await
            .map_err(status)?;
        Ok(pb::ResourceResponse {
            resource: out.pop().map(|r| r.redacted()),
            revision,
        })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_resource(
        &self,
        req: Request<pb::CreateResourceRequest>,
    ) -> Result<Response<pb::ResourceResponse>, Status> {
        let actor = self.admin(&req).await?;
        let r = defaults(required(req.into_inner().resource, "resource")?);
        writable(&r)?;
        let upstream = match &r.resource {
            Some(R::Upstream(u)) => Some(u.name.clone()),
            _ => None,
        };
        let out = self.one(&actor, "create", Op::Create(r)).await?;
        if let Some(name) = upstream {
            // The catalog follows in the background; a failure is logged and
            // retried by the periodic refresh.
            self.discoverer.refresh_soon(name);
        }
        Ok(Response::new(out))
    }

    async fn update_resource(
        &self,
        req: Request<pb::UpdateResourceRequest>,
    ) -> Result<Response<pb::ResourceResponse>, Status> {
        let actor = self.admin(&req).await?;
        let r = defaults(required(req.into_inner().resource, "resource")?);
        writable(&r)?;
        Ok(Response::new(
            self.one(&actor, "update", Op::Update(r)).await?,
        ))
    }

    async fn delete_resource(
        &self,
        req: Request<pb::DeleteResourceRequest>,
    ) -> Result<Response<pb::DeleteResourceResponse>, Status> {
        let actor = self.admin(&req).await?;
        let rf = required(req.into_inner().resource, "resource")?;
        match rf.kind() {
            Kind::Tool | Kind::SessionKeys | Kind::Unspecified => {
                return Err(Status::invalid_argument(format!(
                    "resource.kind: {} cannot be deleted",
                    rf.kind().label()
                )));
            }
            _ => {}
        }
        let (revision, _) = self
            .store
            .apply(&actor, "delete", vec![Op::Delete(rf)])
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteResourceResponse { revision }))
    }

    async fn get_resource(
        &self,
        req: Request<pb::GetResourceRequest>,
    ) -> Result<Response<pb::ResourceResponse>, Status> {
        self.admin(&req).await?;
        let rf = required(req.into_inner().resource, "resource")?;
        let (r, revision) = self
            .store
            .get(rf.kind(), &rf.name)
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("{rf} not found")))?;
        Ok(Response::new(pb::ResourceResponse {
            resource: Some(r.redacted()),
            revision,
        }))
    }

    async fn list_resources(
        &self,
        req: Request<pb::ListResourcesRequest>,
    ) -> Result<Response<pb::ListResourcesResponse>, Status> {
        self.admin(&req).await?;
        let q = req.into_inner();
        if q.kind() == Kind::Unspecified {
            return Err(Status::invalid_argument(
                "kind: required (KIND_TENANT, KIND_UPSTREAM, KIND_TOOL, KIND_PLAN, KIND_SUBSCRIPTION, KIND_API_KEY, KIND_POLICY)",
            ));
        }
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let (resources, revision) = self
            .store
            .list(
                q.kind(),
                opt(&q.tenant).as_deref(),
                opt(&q.upstream).as_deref(),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListResourcesResponse {
            resources: resources.iter().map(|r| r.redacted()).collect(),
            revision,
        }))
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let actor = self.admin(&req).await?;
        let q = req.into_inner();
        let NewKey { key, prefix } = NewKey::generate();
        let api_key = pb::ApiKey {
            prefix,
            display_name: q.display_name,
            tenant: q.tenant,
            sha256: auth::hash(&key).to_vec(),
            subscriptions: q.subscriptions,
        };
        let (revision, _) = self
            .store
            .apply(
                &actor,
                "create",
                vec![Op::Create(R::ApiKey(api_key.clone()).into())],
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(api_key),
            key,
            revision,
        }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::DeleteResourceResponse>, Status> {
        let actor = self.admin(&req).await?;
        let prefix = req.into_inner().prefix;
        let (revision, _) = self
            .store
            .apply(
                &actor,
                "revoke",
                vec![Op::Delete(pb::ResourceRef::new(Kind::ApiKey, prefix))],
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteResourceResponse { revision }))
    }

    async fn discover_tools(
        &self,
        req: Request<pb::DiscoverToolsRequest>,
    ) -> Result<Response<pb::DiscoverToolsResponse>, Status> {
        let actor = self.admin(&req).await?;
        let upstream = req.into_inner().upstream;
        let (tools, revision) = self.discoverer.refresh(&actor, &upstream).await?;
        Ok(Response::new(pb::DiscoverToolsResponse { tools, revision }))
    }

    async fn rotate_session_keys(
        &self,
        req: Request<pb::RotateSessionKeysRequest>,
    ) -> Result<Response<pb::RotateSessionKeysResponse>, Status> {
        let actor = self.admin(&req).await?;
        let keep = match req.into_inner().keep_previous {
            0 => 1,
            n => n.min(8) as usize,
        };
        let (current, _) = self
            .store
            .get(Kind::SessionKeys, "default")
            .await
            .map_err(status)?
            .ok_or_else(|| Status::internal("session keys missing"))?;
        let Some(R::SessionKeys(mut k)) = current.resource else {
            return Err(Status::internal("session keys malformed"));
        };
        let mut previous = vec![std::mem::take(&mut k.current)];
        previous.extend(k.previous);
        previous.truncate(keep);
        k.previous = previous;
        k.current = crate::store::random_bytes::<32>().to_vec();
        let (revision, _) = self
            .store
            .apply(&actor, "rotate", vec![Op::Put(R::SessionKeys(k).into())])
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RotateSessionKeysResponse { revision }))
    }

    async fn list_gateways(
        &self,
        req: Request<pb::ListGatewaysRequest>,
    ) -> Result<Response<pb::ListGatewaysResponse>, Status> {
        self.admin(&req).await?;
        let gateways = self.store.gateways().await.map_err(status)?;
        let revision = self.store.revision().await.map_err(status)?;
        Ok(Response::new(pb::ListGatewaysResponse {
            gateways,
            revision,
        }))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.admin(&req).await?;
        let q = req.into_inner();
        let limit = match q.limit {
            0 => 100,
            n => n.min(1000),
        };
        let entries = self.store.audit(q.after_id, limit).await.map_err(status)?;
        Ok(Response::new(pb::ListAuditResponse { entries }))
    }

    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        self.admin(&req).await?;
        Ok(Response::new(pb::GetStatusResponse {
            store_id: self.store.store_id().to_owned(),
            revision: self.store.revision().await.map_err(status)?,
            control_plane: self.replica.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }
}
