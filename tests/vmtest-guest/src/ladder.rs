//! The backend ladder against a real kernel: every mechanism the host
//! expects from this kernel's config must load and attach, and every one it
//! expects to be missing must be refused. A mechanism the host said nothing
//! about is a failure too, so a new rung cannot go untested.

use crate::{Ctx, Reporter};
use kdiag_shared::backend::{Mechanism, ProbeError};
use kdiag_shared::probe::kernel_supports;

pub fn run(ctx: &Ctx, rep: &mut Reporter) {
    for m in Mechanism::ALL {
        let name = format!("ladder.{}", m.name());
        let want = if ctx.expect.iter().any(|e| e == m.name()) {
            Some(true)
        } else if ctx.absent.iter().any(|e| e == m.name()) {
            Some(false)
        } else {
            None
        };
        let got = kernel_supports(m);
        let said = match &got {
            Ok(()) => "loads and attaches".to_string(),
            Err(ProbeError::Unavailable(why)) => format!("unavailable: {why}"),
            Err(ProbeError::Fatal(why)) => format!("probe failed: {why}"),
        };
        match (want, &got) {
            (Some(true), Ok(())) | (Some(false), Err(ProbeError::Unavailable(_))) => rep.pass(&name, said),
            (Some(true), _) => rep.fail(&name, format!("expected to work: {said}")),
            (Some(false), _) => rep.fail(&name, format!("expected to be refused: {said}")),
            (None, _) => rep.fail(&name, format!("no expectation given by the host: {said}")),
        }
    }
}
