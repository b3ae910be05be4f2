-- Passing cases, returned rather than assigned.
return {
  { name = "small is allowed",
    action = { connector = "shop", action = "refund", effect = "irreversible", input = { amount = 5 } },
    expect = { verdict = "allow", rule = "small", policy = "shop.lua" } },
  { name = "big asks finance or lead, in any order",
    action = { connector = "shop", action = "refund", input = { amount = 500 } },
    expect = { verdict = "approve", rule = "big", roles = { "lead", "finance" }, four_eyes = true,
               summary = "Refund 500" } },
  { name = "the default decides for others",
    action = { connector = "crm", effect = "read" },
    expect = { verdict = "allow", rule = "default", policy = "", roles = {}, four_eyes = false } },
}
