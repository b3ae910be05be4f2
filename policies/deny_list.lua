-- deny_list.lua - customers, email addresses and email domains aiorun never acts for.
--
-- Covers every action of the connectors in CONNECTORS (covers, built from CONNECTORS, keeps
-- decide from running for other connectors at all). It looks at two input fields:
--   input.customer  a customer id, e.g. "C-1001"
--   input.email     an email address, e.g. "someone@example.com"
-- Anything listed below is denied, whatever the other policies say (a deny always wins).
-- Every other action: no opinion (nil).
--
-- Rules:
--   denied_customer  input.customer is in DENIED_CUSTOMERS
--   denied_email     input.email is in DENIED_EMAILS (any case)
--   denied_domain    input.email's domain, or a domain it is under, is in DENIED_DOMAINS
--                    ("mail.example.net" is under "example.net")
--
-- To add an entry, add a line with the value and why it is listed: the reason is written to
-- the audit trail. Tests: deny_list_test.lua.

local CONNECTORS = { shop = true, tickets = true }

-- decide only runs for the actions of these connectors: covers = { "shop", "tickets" }
covers = {}
for name in pairs(CONNECTORS) do
  covers[#covers + 1] = name
end

local DENIED_CUSTOMERS = {
  ["C-1001"] = "chargeback fraud (case 2025-118)",
  ["C-2417"] = "account closed at the customer's request",
}

-- Write addresses in lower case.
local DENIED_EMAILS = {
  ["mallory@example.com"] = "abusive messages to support",
}

-- Write domains in lower case.
local DENIED_DOMAINS = {
  ["example.net"] = "disposable email provider",
}

local function deny(rule, what, why)
  return { verdict = "deny", rule = rule, reason = what .. " is on the deny list: " .. why }
end

function decide(action, ctx)
  if not CONNECTORS[action.connector] or type(action.input) ~= "table" then
    return nil
  end
  local input = action.input

  local customer = input.customer
  if type(customer) == "string" and DENIED_CUSTOMERS[customer] then
    return deny("denied_customer", "customer " .. customer, DENIED_CUSTOMERS[customer])
  end

  local email = input.email
  if type(email) == "string" then
    email = email:lower():match("^%s*(.-)%s*$")
    if DENIED_EMAILS[email] then
      return deny("denied_email", email, DENIED_EMAILS[email])
    end
    -- "a@mail.example.net": try "mail.example.net", then "example.net", then "net"
    local domain = email:match("@([^@]+)$")
    while domain do
      if DENIED_DOMAINS[domain] then
        return deny("denied_domain", "the domain " .. domain, DENIED_DOMAINS[domain])
      end
      domain = domain:match("^[^.]*%.(.+)$")
    end
  end

  return nil
end
