//! Plain TCP proxying for connections that do not start with the HTTP/2
//! preface: balanced per connection, bytes passed through untouched.

use std::sync::Arc;

use tokio::{io::AsyncWriteExt, net::TcpStream};
use tracing::debug;

use super::{Ctx, ProxyError};
use crate::balance::{Outcome, ServiceSlot};

pub(crate) async fn proxy(
    ctx: &Arc<Ctx>,
    mut client: TcpStream,
    prefix: Vec<u8>,
    slot: &ServiceSlot,
) -> Result<(), ProxyError> {
    slot.count_tcp_connection();
    let mut tried: Vec<usize> = Vec::new();
    let (mut upstream, guard) = loop {
        let Some(state) = slot.state() else {
            debug!("service removed: plain TCP connection closed");
            return Ok(());
        };
        let Some(ep) = state.pick_connection(&tried) else {
            slot.count_no_endpoint();
            debug!("no available endpoint: plain TCP connection closed");
            return Ok(());
        };
        tried.push(crate::balance::pick::identity(&ep));
        let guard = ep.start_connection();
        let connect = TcpStream::connect(ep.address);
        match tokio::time::timeout(ctx.opts.pool.connect_timeout, connect).await {
            Ok(Ok(s)) => break (s, guard),
            Ok(Err(e)) => debug!(endpoint = %ep.address, error = %e, "connect failed"),
            Err(_) => debug!(endpoint = %ep.address, "connect timed out"),
        }
        guard.finish(Outcome::ConnectFailed);
        if tried.len() > ctx.opts.max_retries {
            return Ok(());
        }
        slot.count_retry();
    };
    let _ = upstream.set_nodelay(true);
    upstream.write_all(&prefix).await?;
    let res = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    match res {
        Ok((up, down)) => {
            debug!(endpoint = %guard.endpoint().address, up, down, "plain TCP connection done");
            guard.finish(Outcome::Status(0));
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
