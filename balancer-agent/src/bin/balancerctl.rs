fn main() -> anyhow::Result<()> {
    anyhow::bail!("balancerctl: not wired yet")
}
