//! `--api eureka`: the same instances driven through the node's Eureka REST
//! API (`/eureka`): `register` registers them (`POST /eureka/apps/{APP}`,
//! 204), `beat` renews them round-robin (`PUT /eureka/apps/{APP}/{id}`),
//! `query` fetches the whole registry as Eureka clients do at start and on
//! a hashcode mismatch (`GET /eureka/apps/`, XML, one app of N instances).
//! Apps are the services' names in upper case; the lease is
//! `renewalIntervalInSecs` 30 and `durationInSecs` twice `--lease`.

use bytes::Bytes;
use hyper::{Method, StatusCode, Uri};

use super::{Check, Kind, Mode, Op, Opts, ip, port, query_service, service};

/// The modes `--api eureka` has.
pub(crate) fn supports(mode: Mode, batch: u64) -> Result<(), String> {
    match mode {
        Mode::Register | Mode::Query | Mode::Beat if batch == 1 => Ok(()),
        Mode::Beat => Err("--api eureka renews one instance a request: --batch must be 1".to_owned()),
        _ => Err("--api eureka has the modes register, beat and query".to_owned()),
    }
}

/// The Eureka app of instance `i`.
pub(crate) fn app(o: &Opts, i: u64) -> String {
    let name = if o.mode == Mode::Query { query_service(o.instances) } else { service(o, i) };
    name.to_ascii_uppercase()
}

fn instance_id(i: u64) -> String {
    format!("{}:{}", ip(i), port(i))
}

/// The registration of instance `i`, as py-eureka-client sends it.
pub(super) fn register_op(o: &Opts, i: u64, kind: Kind) -> Op {
    let app = app(o, i);
    let (ip, port, id) = (ip(i), port(i), instance_id(i));
    let duration = o.lease_ms.map_or(90, |l| (l * 2 / 1000).max(2));
    let lower = app.to_ascii_lowercase();
    let body = format!(
        r#"{{"instance":{{"instanceId":"{id}","hostName":"{ip}","app":"{app}","ipAddr":"{ip}","port":{{"$":{port},"@enabled":"true"}},"securePort":{{"$":443,"@enabled":"false"}},"countryId":1,"dataCenterInfo":{{"@class":"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo","name":"MyOwn"}},"leaseInfo":{{"renewalIntervalInSecs":30,"durationInSecs":{duration}}},"metadata":{{"version":"1.4.2","zone":"eu-west-1a"}},"homePageUrl":"http://{ip}:{port}/","vipAddress":"{lower}","secureVipAddress":"{lower}","status":"UP","overriddenstatus":"UNKNOWN","lastUpdatedTimestamp":"1","lastDirtyTimestamp":"1"}}}}"#
    );
    Op {
        kind,
        method: Method::POST,
        uri: Uri::try_from(format!("/eureka/apps/{app}")).expect("a valid URI"),
        body: Bytes::from(body),
        items: 1,
        check: Check::NoContent,
    }
}

/// A renewal of instance `i`.
pub(super) fn renew_op(o: &Opts, i: u64) -> Op {
    let uri = format!("/eureka/apps/{}/{}?status=UP&lastDirtyTimestamp=1", app(o, i), instance_id(i));
    Op {
        kind: Kind::Beat,
        method: Method::PUT,
        uri: Uri::try_from(uri).expect("a valid URI"),
        body: Bytes::new(),
        items: 1,
        check: Check::Status,
    }
}

/// The full fetch.
pub(super) fn fetch_uri() -> Uri {
    Uri::from_static("/eureka/apps/")
}

/// Whether a registration was taken.
pub(super) fn registered(status: StatusCode) -> bool {
    status == StatusCode::NO_CONTENT
}
