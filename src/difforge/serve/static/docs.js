// The API reference at /docs: Swagger UI, served by this server itself (no CDN), on /openapi.json.
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
