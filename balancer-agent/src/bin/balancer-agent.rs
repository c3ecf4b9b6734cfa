fn main() -> anyhow::Result<()> {
    anyhow::bail!("balancer-agent: not wired yet")
}
