-- listings_test.lua - what listings.lua decides, together with the other policies here.
-- Tests run at a Wednesday noon (UTC) unless they give `now`. Run: aioctl policy test policies

local function listing(new_product)
  return {
    connector = "shop", action = "create_listing", effect = "write",
    input = { title = "Blue mug", price = 12.5, new_product = new_product },
    proposer = { kind = "ai", confidence = 0.9 },
    submitter = "catalog-bot",
  }
end

tests = {
  { name = "a new product needs the catalog team, and not the submitter",
    action = listing(true),
    expect = { verdict = "approve", rule = "listing_new_product", policy = "listings.lua",
               roles = { "catalog" }, four_eyes = true,
               summary = "New product listing: Blue mug" } },

  { name = "a product the shop already sells is listed without approval",
    action = listing(false),
    expect = { verdict = "allow", rule = "listing_existing_product" } },

  { name = "no new_product field: an existing product",
    action = listing(nil),
    expect = { verdict = "allow", rule = "listing_existing_product" } },

  { name = "new_product = \"yes\" is treated as a new product",
    action = listing("yes"),
    expect = { verdict = "approve", rule = "listing_new_product", roles = { "catalog" } } },

  { name = "a new product from an unsure AI is still the catalog team's call",
    action = {
      connector = "shop", action = "create_listing", effect = "write",
      input = { title = "Red mug", new_product = true },
      proposer = { kind = "ai", confidence = 0.5 },
    },
    expect = { verdict = "approve", rule = "listing_new_product", four_eyes = true } },

  { name = "a listing for a denied customer is denied",
    action = {
      connector = "shop", action = "create_listing", effect = "write",
      input = { title = "Custom mug", new_product = false, customer = "C-2417" },
    },
    expect = { verdict = "deny", rule = "denied_customer" } },

  -- listings.lua covers only shop.create_listing: for anything else its decide does not run.
  { name = "updating a listing is not covered: a write, so the default asks a person",
    action = { connector = "shop", action = "update_listing", effect = "write",
               input = { title = "Blue mug", new_product = true } },
    expect = { verdict = "approve", rule = "default", roles = {} } },
}
