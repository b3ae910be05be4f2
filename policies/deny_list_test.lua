-- deny_list_test.lua - what deny_list.lua decides, together with the other policies here.
-- Tests run at a Wednesday noon (UTC) unless they give `now`. Run: aioctl policy test policies

tests = {
  { name = "a listed customer gets no refund, however small",
    action = { connector = "shop", action = "refund", effect = "irreversible",
               input = { order = "88", amount = 5, customer = "C-1001" } },
    expect = { verdict = "deny", rule = "denied_customer", policy = "deny_list.lua" } },

  { name = "a customer who is not listed is judged by the other policies",
    action = { connector = "shop", action = "refund", effect = "irreversible",
               input = { order = "88", amount = 5, customer = "C-1002" } },
    expect = { verdict = "allow", rule = "refund_small" } },

  { name = "a listed email is denied in any case and with spaces around it",
    action = { connector = "tickets", action = "reply", effect = "write",
               input = { ticket = "T-9", email = "  Mallory@Example.COM " } },
    expect = { verdict = "deny", rule = "denied_email" } },

  { name = "a listed domain is denied",
    action = { connector = "tickets", action = "reply", effect = "write",
               input = { ticket = "T-9", email = "someone@example.net" } },
    expect = { verdict = "deny", rule = "denied_domain" } },

  { name = "a subdomain of a listed domain is denied",
    action = { connector = "shop", action = "charge", effect = "irreversible",
               input = { amount = 30, email = "x@mail.example.net" } },
    expect = { verdict = "deny", rule = "denied_domain" } },

  { name = "a domain that only ends like a listed one is not denied",
    action = { connector = "tickets", action = "reply", effect = "write",
               input = { ticket = "T-9", email = "someone@notexample.net" } },
    expect = { verdict = "approve", rule = "default" } },

  { name = "a charge has no rule of its own: irreversible, so the default asks a person",
    action = { connector = "shop", action = "charge", effect = "irreversible",
               input = { amount = 30, customer = "C-1002" } },
    expect = { verdict = "approve", rule = "default", roles = {} } },

  { name = "a ticket lookup is a read: allowed by default",
    action = { connector = "tickets", action = "get", effect = "read",
               input = { ticket = "T-9" } },
    expect = { verdict = "allow", rule = "default" } },

  { name = "other connectors are not covered, even with a listed customer",
    action = { connector = "crm", action = "lookup", effect = "read",
               input = { customer = "C-1001" } },
    expect = { verdict = "allow", rule = "default" } },
}
