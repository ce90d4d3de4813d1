//! A hostile capsule that opens a TCP connection. Its component imports
//! `wasi:sockets/*`, which no runner grants: admission must refuse it before
//! it runs, whether or not the manifest declares the imports.

use capsule_sdk::{Capsule, Ctx, Plan, PlanBuilder, Verification, export_capsule};

struct Net;

impl Capsule for Net {
    fn plan(_ctx: &Ctx) -> Result<Plan, String> {
        match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => Err("ESCAPED: connected to the network".into()),
            Err(e) => Ok(PlanBuilder::new(format!("connect failed: {e}")).build()),
        }
    }
    fn apply(_ctx: &Ctx, _plan: &Plan) -> Result<(), String> {
        Ok(())
    }
    fn verify(_ctx: &Ctx, _plan: &Plan) -> Result<Verification, String> {
        Ok(Verification::new(true, "nothing"))
    }
}

export_capsule!(Net);
