-- default_test.lua - what default.lua decides for the echo demo, with the other policies here.
-- The other shipped policies must not change any of these. Run: aioctl policy test policies

local function echo(message, confidence)
  return {
    connector = "echo", action = "echo", effect = "read",
    input = { message = message },
    proposer = { kind = "ai", model = "demo", confidence = confidence or 0.9 },
    submitter = "demo",
  }
end

tests = {
  { name = "echo says hello",
    action = echo("hello"),
    expect = { verdict = "allow", rule = "echo_allowed", policy = "default.lua" } },

  { name = "echo refuses the word forbidden, in any case",
    action = echo("this is FORBIDDEN"),
    expect = { verdict = "deny", rule = "echo_forbidden_word" } },

  { name = "echo refuses messages over 4096 bytes",
    action = echo(string.rep("a", 4097)),
    expect = { verdict = "deny", rule = "echo_too_long" } },

  { name = "4096 bytes are fine",
    action = echo(string.rep("a", 4096)),
    expect = { verdict = "allow", rule = "echo_allowed" } },

  { name = "an AI below 0.2 confidence may not act",
    action = echo("hello", 0.1),
    expect = { verdict = "deny", rule = "low_confidence" } },

  { name = "echo on a Saturday night is the same",
    action = echo("hello"),
    now = "2026-01-10T23:00:00Z",
    expect = { verdict = "allow", rule = "echo_allowed" } },

  { name = "an unknown write needs approval by default",
    action = { connector = "crm", action = "update", effect = "write", input = {} },
    expect = { verdict = "approve", rule = "default" } },

  { name = "an unknown read is allowed by default",
    action = { connector = "crm", action = "lookup", effect = "read", input = {} },
    expect = { verdict = "allow", rule = "default" } },
}
