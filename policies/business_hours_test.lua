-- business_hours_test.lua - what business_hours.lua decides, together with the other policies.
-- Every test here gives `now`, a UTC time. 2026-01-05 is a Monday, 2026-01-10 a Saturday.
-- Run: aioctl policy test policies

local small_refund = {
  connector = "shop", action = "refund", effect = "irreversible",
  input = { order = "1042", amount = 40 },
  proposer = { kind = "ai", confidence = 0.95 },
}

local ticket_delete = {
  connector = "tickets", action = "delete", effect = "irreversible",
  input = { ticket = "T-9" },
}

tests = {
  { name = "Monday 08:00 is open",
    action = small_refund, now = "2026-01-05T08:00:00Z",
    expect = { verdict = "allow", rule = "refund_small" } },

  { name = "Monday 07:59 is closed",
    action = small_refund, now = "2026-01-05T07:59:59Z",
    expect = { verdict = "approve", rule = "outside_business_hours",
               policy = "business_hours.lua", roles = {} } },

  { name = "Friday 17:59 is open",
    action = small_refund, now = "2026-01-09T17:59:59Z",
    expect = { verdict = "allow" } },

  { name = "Friday 18:00 is closed",
    action = small_refund, now = "2026-01-09T18:00:00Z",
    expect = { verdict = "approve", rule = "outside_business_hours" } },

  { name = "Saturday noon is closed",
    action = small_refund, now = "2026-01-10T12:00:00Z",
    expect = { verdict = "approve", rule = "outside_business_hours" } },

  { name = "Sunday noon is closed",
    action = small_refund, now = "2026-01-11T12:00:00Z",
    expect = { verdict = "approve", rule = "outside_business_hours" } },

  { name = "Christmas Day is a holiday, although a Friday",
    action = small_refund, now = "2026-12-25T10:00:00Z",
    expect = { verdict = "approve", rule = "outside_business_hours" } },

  { name = "deleting a ticket at night needs approval",
    action = ticket_delete, now = "2026-01-06T23:30:00Z",
    expect = { verdict = "approve", rule = "outside_business_hours" } },

  { name = "deleting a ticket during the day: no rule, so the default asks a person",
    action = ticket_delete, now = "2026-01-06T10:00:00Z",
    expect = { verdict = "approve", rule = "default" } },

  { name = "a write at night is not covered (only irreversible actions are)",
    action = { connector = "tickets", action = "reply", effect = "write",
               input = { ticket = "T-9", text = "Thanks!" } },
    now = "2026-01-10T23:00:00Z",
    expect = { verdict = "approve", rule = "default" } },

  { name = "a new listing on Sunday: a write, so only listings.lua speaks",
    action = { connector = "shop", action = "create_listing", effect = "write",
               input = { title = "Mug", new_product = false } },
    now = "2026-01-11T12:00:00Z",
    expect = { verdict = "allow", rule = "listing_existing_product" } },

  { name = "other connectors are not covered",
    action = { connector = "echo", action = "echo", effect = "read",
               input = { message = "hello" } },
    now = "2026-01-10T23:00:00Z",
    expect = { verdict = "allow", rule = "echo_allowed" } },
}
