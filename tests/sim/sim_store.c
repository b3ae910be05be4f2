/* sim_store.c - the fake API resources of the simulator (see sim_store.h). */
#include "sim_store.h"
#include "sim_route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct sim_store {
    json_t *orders;   /* arrays of objects, in creation order */
    json_t *products;
    json_t *tickets;
    int next_order, next_product, next_ticket;
};

typedef int (*route_fn)(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);

static int list_orders(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);
static int get_order(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);
static int create_order(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);
static int refund_order(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);
static int list_products(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);
static int get_product(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);
static int create_product(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);
static int patch_product(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);
static int list_tickets(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);
static int get_ticket(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);
static int create_ticket(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);
static int tag_ticket(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect);

static const struct route {
    const char *method;
    const char *path;
    route_fn fn;
    int takes_body;
} routes[] = {
    {"GET", "/orders", list_orders, 0},
    {"POST", "/orders", create_order, 1},
    {"GET", "/orders/{id}", get_order, 0},
    {"POST", "/orders/{id}/refund", refund_order, 1},
    {"GET", "/products", list_products, 0},
    {"POST", "/products", create_product, 1},
    {"GET", "/products/{id}", get_product, 0},
    {"PATCH", "/products/{id}", patch_product, 1},
    {"GET", "/tickets", list_tickets, 0},
    {"POST", "/tickets", create_ticket, 1},
    {"GET", "/tickets/{id}", get_ticket, 0},
    {"POST", "/tickets/{id}/tags", tag_ticket, 1},
};
#define ROUTE_COUNT (sizeof routes / sizeof routes[0])

static const struct seed {
    const char *name;
    double price;
} seeds[] = {{"Widget", 9.99}, {"Gadget", 24.5}, {"Gizmo", 3.0}};

static json_t *now_iso8601(void)
{
    struct timespec ts;
    struct tm tm;
    char buf[40];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, sizeof buf - n, ".%03ldZ", ts.tv_nsec / 1000000);
    return json_string(buf);
}

static json_t *new_id(const char *prefix, int *counter)
{
    return json_sprintf("%s_%d", prefix, (*counter)++);
}

static int error_reply(json_t **reply, int status, const char *code, const char *message)
{
    *reply = message ? json_pack("{s:s, s:s}", "error", code, "message", message)
                     : json_pack("{s:s}", "error", code);
    return status;
}

static int invalid(json_t **reply, const char *message)
{
    return error_reply(reply, 422, "invalid", message);
}

static json_t *find_by_id(json_t *array, const char *id)
{
    size_t i;
    json_t *item;
    json_array_foreach(array, i, item) {
        if (strcmp(json_string_value(json_object_get(item, "id")), id) == 0)
            return item;
    }
    return NULL;
}

/* A required non-empty string member, or NULL. */
static const char *required_string(json_t *body, const char *name)
{
    const char *v = json_string_value(json_object_get(body, name));
    return v && *v ? v : NULL;
}

static void seed_products(sim_store *s)
{
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        json_t *ts = now_iso8601();
        json_array_append_new(s->products,
                              json_pack("{s:o, s:s, s:f, s:s, s:O, s:O}", "id",
                                        new_id("prd", &s->next_product), "name", seeds[i].name,
                                        "price", seeds[i].price, "currency", "USD",
                                        "created_at", ts, "updated_at", ts));
        json_decref(ts);
    }
}

sim_store *sim_store_new(void)
{
    sim_store *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->orders = json_array();
    s->products = json_array();
    s->tickets = json_array();
    if (!s->orders || !s->products || !s->tickets) {
        sim_store_free(s);
        return NULL;
    }
    s->next_order = s->next_product = s->next_ticket = 1;
    seed_products(s);
    return s;
}

void sim_store_free(sim_store *s)
{
    if (!s)
        return;
    json_decref(s->orders);
    json_decref(s->products);
    json_decref(s->tickets);
    free(s);
}

void sim_store_reset(sim_store *s)
{
    json_array_clear(s->orders);
    json_array_clear(s->products);
    json_array_clear(s->tickets);
    s->next_order = s->next_product = s->next_ticket = 1;
    seed_products(s);
}

sim_route_result sim_store_route(const char *method, const char *path, char *allow, size_t cap)
{
    size_t used = 0;
    if (cap)
        allow[0] = '\0';
    for (size_t i = 0; i < ROUTE_COUNT; i++) {
        if (!sim_path_matches(routes[i].path, path, NULL, 0))
            continue;
        if (strcmp(routes[i].method, method) == 0)
            return SIM_ROUTE_FOUND;
        if (used < cap) {
            int n = snprintf(allow + used, cap - used, "%s%s", used ? ", " : "", routes[i].method);
            used += n > 0 ? (size_t)n : 0;
        }
    }
    return used ? SIM_ROUTE_BAD_METHOD : SIM_ROUTE_NOT_FOUND;
}

int sim_store_handle(sim_store *s, const char *method, const char *path, const char *body,
                     size_t len, json_t **reply, int *effect)
{
    *reply = NULL;
    *effect = 0;
    for (size_t i = 0; i < ROUTE_COUNT; i++) {
        char id[128];
        if (strcmp(routes[i].method, method) != 0 ||
            !sim_path_matches(routes[i].path, path, id, sizeof id))
            continue;
        json_t *parsed = NULL;
        if (routes[i].takes_body) {
            parsed = json_loadb(body ? body : "", len, 0, NULL);
            if (!parsed)
                return error_reply(reply, 400, "invalid_json", NULL);
            if (!json_is_object(parsed)) {
                json_decref(parsed);
                return invalid(reply, "the body must be a JSON object");
            }
        }
        int status = routes[i].fn(s, id, parsed, reply, effect);
        json_decref(parsed);
        return status;
    }
    return error_reply(reply, 404, "not_found", NULL);
}

/* ---- orders ---- */

static int list_orders(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect)
{
    (void)id, (void)body, (void)effect;
    *reply = json_pack("{s:o}", "orders", json_deep_copy(s->orders));
    return 200;
}

static int get_order(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect)
{
    (void)body, (void)effect;
    json_t *order = find_by_id(s->orders, id);
    if (!order)
        return error_reply(reply, 404, "not_found", NULL);
    *reply = json_deep_copy(order);
    return 200;
}

static int create_order(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect)
{
    (void)id;
    const char *product = required_string(body, "product_id");
    const char *customer = required_string(body, "customer");
    json_t *quantity = json_object_get(body, "quantity");
    if (!product)
        return invalid(reply, "product_id: a non-empty string is required");
    if (!json_is_integer(quantity) || json_integer_value(quantity) <= 0)
        return invalid(reply, "quantity: an integer greater than 0 is required");
    if (!customer)
        return invalid(reply, "customer: a non-empty string is required");
    json_t *order = json_pack("{s:o, s:s, s:I, s:s, s:s, s:b, s:o}", "id",
                              new_id("ord", &s->next_order), "product_id", product, "quantity",
                              (json_int_t)json_integer_value(quantity), "customer", customer,
                              "status", "open", "refunded", 0, "created_at", now_iso8601());
    json_array_append_new(s->orders, order);
    *reply = json_deep_copy(order);
    *effect = 1;
    return 201;
}

static int refund_order(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect)
{
    json_t *order = find_by_id(s->orders, id);
    if (!order)
        return error_reply(reply, 404, "not_found", NULL);
    json_t *amount = json_object_get(body, "amount");
    if (!json_is_number(amount) || json_number_value(amount) <= 0)
        return invalid(reply, "amount: a number greater than 0 is required");
    if (json_is_true(json_object_get(order, "refunded")))
        return error_reply(reply, 409, "already_refunded", NULL);
    json_object_set_new(order, "refunded", json_true());
    json_object_set_new(order, "refunded_amount", json_real(json_number_value(amount)));
    json_object_set_new(order, "status", json_string("refunded"));
    json_object_set_new(order, "refunded_at", now_iso8601());
    *reply = json_deep_copy(order);
    *effect = 1;
    return 200;
}

/* ---- products ---- */

static int list_products(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect)
{
    (void)id, (void)body, (void)effect;
    *reply = json_pack("{s:o}", "products", json_deep_copy(s->products));
    return 200;
}

static int get_product(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect)
{
    (void)body, (void)effect;
    json_t *product = find_by_id(s->products, id);
    if (!product)
        return error_reply(reply, 404, "not_found", NULL);
    *reply = json_deep_copy(product);
    return 200;
}

static int create_product(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect)
{
    (void)id;
    const char *name = required_string(body, "name");
    json_t *price = json_object_get(body, "price");
    if (!name)
        return invalid(reply, "name: a non-empty string is required");
    if (!json_is_number(price) || json_number_value(price) < 0)
        return invalid(reply, "price: a number of at least 0 is required");
    json_t *ts = now_iso8601();
    json_t *product = json_pack("{s:o, s:s, s:f, s:s, s:O, s:O}", "id",
                                new_id("prd", &s->next_product), "name", name, "price",
                                json_number_value(price), "currency", "USD", "created_at", ts,
                                "updated_at", ts);
    json_decref(ts);
    json_array_append_new(s->products, product);
    *reply = json_deep_copy(product);
    *effect = 1;
    return 201;
}

static int patch_product(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect)
{
    json_t *product = find_by_id(s->products, id);
    if (!product)
        return error_reply(reply, 404, "not_found", NULL);
    json_t *price = json_object_get(body, "price");
    json_t *name = json_object_get(body, "name");
    if (!json_is_number(price) || json_number_value(price) < 0)
        return invalid(reply, "price: a number of at least 0 is required");
    if (name && (!json_is_string(name) || !*json_string_value(name)))
        return invalid(reply, "name: must be a non-empty string when given");
    json_object_set_new(product, "price", json_real(json_number_value(price)));
    if (name)
        json_object_set(product, "name", name);
    json_object_set_new(product, "updated_at", now_iso8601());
    *reply = json_deep_copy(product);
    *effect = 1;
    return 200;
}

/* ---- tickets ---- */

static int list_tickets(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect)
{
    (void)id, (void)body, (void)effect;
    *reply = json_pack("{s:o}", "tickets", json_deep_copy(s->tickets));
    return 200;
}

static int get_ticket(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect)
{
    (void)body, (void)effect;
    json_t *ticket = find_by_id(s->tickets, id);
    if (!ticket)
        return error_reply(reply, 404, "not_found", NULL);
    *reply = json_deep_copy(ticket);
    return 200;
}

static int create_ticket(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect)
{
    (void)id;
    const char *subject = required_string(body, "subject");
    const char *text = required_string(body, "body");
    if (!subject)
        return invalid(reply, "subject: a non-empty string is required");
    if (!text)
        return invalid(reply, "body: a non-empty string is required");
    json_t *ticket = json_pack("{s:o, s:s, s:s, s:s, s:[], s:o}", "id",
                               new_id("tkt", &s->next_ticket), "subject", subject, "body", text,
                               "status", "open", "tags", "created_at", now_iso8601());
    json_array_append_new(s->tickets, ticket);
    *reply = json_deep_copy(ticket);
    *effect = 1;
    return 201;
}

static int has_tag(json_t *tags, const char *tag)
{
    size_t i;
    json_t *t;
    json_array_foreach(tags, i, t) {
        if (strcmp(json_string_value(t), tag) == 0)
            return 1;
    }
    return 0;
}

static int tag_ticket(sim_store *s, const char *id, json_t *body, json_t **reply, int *effect)
{
    json_t *ticket = find_by_id(s->tickets, id);
    if (!ticket)
        return error_reply(reply, 404, "not_found", NULL);
    json_t *tags = json_object_get(body, "tags");
    size_t i;
    json_t *t;
    if (!json_is_array(tags) || json_array_size(tags) == 0)
        return invalid(reply, "tags: a non-empty array of strings is required");
    json_array_foreach(tags, i, t) {
        if (!json_is_string(t) || !*json_string_value(t))
            return invalid(reply, "tags: every tag must be a non-empty string");
    }
    json_t *have = json_object_get(ticket, "tags");
    json_array_foreach(tags, i, t) {
        if (!has_tag(have, json_string_value(t)))
            json_array_append(have, t);
    }
    *reply = json_deep_copy(ticket);
    *effect = 1;
    return 200;
}
